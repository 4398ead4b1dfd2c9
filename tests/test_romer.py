"""ROMER: percentile router normalization and expert replacement."""

import json

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogExperts, DigitalMatrix, find_routers, trace_routing
from romer_aihwkit.calibration import routing_metrics


class DistortedMatrix(DigitalMatrix):
    """A router 'tile' whose logits are a per-expert affine distortion of the digital ones."""

    def __init__(self, matrix, scale, shift):
        super().__init__(matrix.weight, None, "router", matrix.matrix_name)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x):
        return super().forward(x) * self.scale + self.shift


def converted(family="olmoe", device="ideal", seed=0):
    model = ra.convert_to_analog_moe(tiny_model(family), device)
    model.program_analog_weights(seed=seed)
    return model


def calib_tokens(n=16, length=32, seed=5):
    return torch.randint(3, 96, (n, length), generator=torch.Generator().manual_seed(seed))


def fidelity(model, tokens):
    events = []
    with trace_routing(model, events.append), torch.no_grad():
        model(tokens)
    return sum(routing_metrics(e.selected, e.reference_selected, e.num_experts)["router_fidelity"] for e in events) / len(events)


def distort(model, scale, shift):
    for router in find_routers(model):
        router.matrix = DistortedMatrix(router.matrix, scale, shift)


def test_normalization_undoes_per_expert_affine_distortion():
    model = converted()
    g = torch.Generator().manual_seed(1)
    distort(model, scale=torch.rand(8, generator=g) * 2.5 + 0.3, shift=torch.randn(8, generator=g))
    tokens = calib_tokens()
    held_out = calib_tokens(seed=9)
    before = fidelity(model, held_out)
    report = ra.calibrate(model, tokens, callbacks=[ra.Romer(replacement="none")], progress=False)
    after = fidelity(model, held_out)
    assert before < 0.85
    assert after > 0.97, (before, after)
    assert report["romer-norm"].summary["router_fidelity"]["after"] > 0.97


def test_ideal_device_romer_changes_nothing():
    model = converted()
    x = calib_tokens(4, seed=11)
    with torch.no_grad():
        ref = model(x).logits
    report = ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer()], progress=False)
    with torch.no_grad():
        out = model(x).logits
    assert report["romer"].replaced_experts == 0
    assert torch.allclose(out, ref, atol=1e-5)
    for layer in report["romer"].layers:
        assert torch.allclose(torch.tensor(layer.scale), torch.ones(8), atol=1e-4)


def test_replacement_picks_exactly_the_cold_experts_and_replicas_match_under_ideal():
    model = converted()
    shift = torch.zeros(8)
    shift[[3, 6]] = -30.0  # experts 3 and 6 are never selected by the noisy router
    distort(model, torch.ones(8), shift)
    report = ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(normalize=False, tau=0.25, max_masked_share=None)],
                          progress=False)
    for layer in report["romer-replace"].layers:
        load = torch.tensor(layer.normalized_load)
        cold = {i for i in range(8) if load[i] < 0.25 / 8}
        assert cold == {3, 6}
        assert {p.cold for p in layer.replaced} == cold
        hottest = torch.argsort(load, descending=True)[:2].tolist()
        assert sorted(p.hot for p in layer.replaced) == sorted(hottest)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    router = find_routers(model)[0]
    assert router.expert_mask.nonzero().flatten().tolist() == [3, 6]
    x = torch.randn(7, 32)
    for hot, cold in enumerate(experts.replica_of.tolist()):
        if cold >= 0:
            assert torch.allclose(experts.expert_forward(cold, x), experts.expert_forward(hot, x), atol=1e-6)
    # masked experts leave routing
    events = []
    with trace_routing(model, events.append), torch.no_grad():
        model(calib_tokens(4, seed=3))
    for ev in events:
        assert not torch.isin(ev.selected, torch.tensor([3, 6])).any()


def test_split_mode_balances_the_two_tiles():
    model = converted()
    shift = torch.zeros(8)
    shift[5] = -30.0
    distort(model, torch.ones(8), shift)
    ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(normalize=False, replacement="split")], progress=False)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    hot = int((experts.replica_of >= 0).nonzero()[0])
    cold = int(experts.replica_of[hot])
    rows = {hot: 0, cold: 0}
    run = experts.gate_up.mvm

    def counting(e, x):
        if e in rows:
            rows[e] += x.shape[0]
        return run(e, x)

    experts.gate_up.mvm = counting
    with torch.no_grad():
        model(calib_tokens(8, seed=4))
    assert rows[hot] > 0 and abs(rows[hot] - rows[cold]) <= 1


def test_pcm_romer_report_and_save_load_round_trip(tmp_path):
    model = converted(device="pcm", seed=2)
    model.drift_analog_weights(3600.0)
    report = ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(tau=0.5)], progress=False)
    romer = report["romer"]
    assert len(romer.layers) == 2
    for layer in romer.layers:
        assert {"scale", "bias", "replaced", "before", "after"} <= set(layer.to_dict())
    x = calib_tokens(2, seed=8)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model(x).logits
    ra.save_calibration(model, tmp_path / "calib")

    other = converted(device="pcm", seed=2)
    other.drift_analog_weights(3600.0)
    ra.load_calibration(other, tmp_path / "calib")
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.allclose(other(x).logits, expected, atol=1e-6)

    wrong_seed = converted(device="pcm", seed=3)
    wrong_seed.drift_analog_weights(3600.0)
    with pytest.raises(ValueError, match="chip instance"):
        ra.load_calibration(wrong_seed, tmp_path / "calib")
    wrong_layout = ra.convert_to_analog_moe(tiny_model("deepseek_v3"), "pcm")
    wrong_layout.program_analog_weights(seed=2)
    with pytest.raises(ValueError, match="MoE layers"):
        ra.load_calibration(wrong_layout, tmp_path / "calib")


def test_reprogramming_resets_calibration():
    model = converted(device="pcm", seed=2)
    ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(tau=0.9)], progress=False)
    assert any(r.is_calibrated() for r in find_routers(model))
    model.program_analog_weights(seed=2)
    assert not any(r.is_calibrated() for r in find_routers(model))
    assert all((m.replica_of < 0).all() for m in model.modules() if isinstance(m, AnalogExperts))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"percentiles": (50, 5, 95)}, "percentiles"),
        ({"percentiles": (0, 50, 95)}, "percentiles"),
        ({"percentiles": (5, 50, 100)}, "percentiles"),
        ({"tau": 1.0}, "tau"),
        ({"tau": -0.1}, "tau"),
        ({"replacement": "swap"}, "replacement"),
    ],
)
def test_bad_romer_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ra.Romer(**kwargs)


def test_bad_calibration_sets():
    model = converted()
    with pytest.raises(ValueError, match="empty"):
        ra.calibrate(model, torch.zeros(0, 16, dtype=torch.long), callbacks=[ra.Romer()], progress=False)
    with pytest.raises(ValueError, match="fewer than"):
        ra.calibrate(model, torch.randint(3, 90, (1, 4)), callbacks=[ra.Romer()], progress=False)
    with pytest.raises(ValueError, match="callback"):
        ra.calibrate(model, calib_tokens(), callbacks=[], progress=False)


def test_nan_router_logits_are_a_clear_error():
    model = converted()
    distort(model, torch.ones(8), torch.full((8,), float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer()], progress=False)


def test_calibration_streaming_memory_is_bounded():
    from romer_aihwkit.calibration.reservoir import RowReservoir

    small, large = RowReservoir(256, 16), RowReservoir(256, 16)
    small.add(torch.randn(100, 16))
    for _ in range(50):
        large.add(torch.randn(100, 16))
    assert small.nbytes() < large.nbytes() + 1 and large.nbytes() == 256 * 16 * 4
    assert large.seen == 5000
    exact = RowReservoir(1000, 2)
    data = torch.randn(600, 2)
    exact.add(data[:300])
    exact.add(data[300:])
    assert torch.equal(exact.rows, data)


def test_romer_auto_selects_on_held_out_blocks():
    from romer_aihwkit.calibration import split_holdout

    fit, hold = split_holdout(calib_tokens(8), 0.25, batch_size=2)
    assert len(fit) == 3 and len(hold) == 1 and hold[0].shape == (2, 32)
    model = converted(device="gaussian-10", seed=1)
    g = torch.Generator().manual_seed(2)
    distort(model, scale=torch.rand(8, generator=g) * 2 + 0.5, shift=torch.randn(8, generator=g))
    report = ra.calibrate(model, calib_tokens(8), callbacks=[ra.RomerAuto(tau_candidates=(0.0, 0.5))], progress=False)
    selection = report["romer-auto"].selection
    assert len(selection["trials"]) == 3 + 1
    best = min(selection["trials"], key=lambda t: t["holdout_nll"])
    assert selection["holdout_nll"] == best["holdout_nll"]
    assert (selection["percentiles"], selection["tau"]) == (best["percentiles"], best["tau"])
    assert report["romer-auto"].settings["tau"] == selection["tau"]


def test_split_mode_halves_the_hottest_tile_load_in_routing_stats():
    from romer_aihwkit.evaluation import routing_stats

    model = converted()
    shift = torch.zeros(8)
    shift[5] = -30.0
    distort(model, torch.ones(8), shift)
    tokens = calib_tokens(8, seed=4)
    ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(normalize=False, replacement="average")], progress=False)
    average = routing_stats(model, tokens, progress=False)
    assert average.tile_max_load_ratio == pytest.approx(average.max_load_ratio)
    ra.calibrate(model, calib_tokens(), callbacks=[ra.Romer(normalize=False, replacement="split")], progress=False)
    split = routing_stats(model, tokens, progress=False)
    for layer, experts in zip(split.layers, [m for m in model.modules() if isinstance(m, AnalogExperts)]):
        (hot,) = (experts.replica_of >= 0).nonzero().flatten().tolist()
        cold = int(experts.replica_of[hot])
        assert layer.load[cold] == 0.0
        assert layer.tile_load[hot] == pytest.approx(layer.load[hot] / 2)
        assert layer.tile_load[cold] == pytest.approx(layer.load[hot] / 2)
        assert layer.tile_max_load_ratio <= layer.max_load_ratio + 1e-12


# ------------------------------------------------------------------ the definitions in docs/romer.md, one by one
@pytest.mark.parametrize("percentiles", [(5.0, 50.0, 95.0), (10.0, 40.0, 90.0)])
def test_percentile_scale_is_the_low_to_high_spread_ratio(percentiles):
    """a_e = (P_hi(z) - P_lo(z)) / (P_hi(z~) - P_lo(z~)), b_e = P_mid(z) - a_e P_mid(z~), under a distortion
    that is not affine (so a scale from any other pair of percentiles, e.g. P95 - P50, differs)."""
    import numpy as np

    from romer_aihwkit.calibration.romer import Romer

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(20000, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0.0, 1.0, -2.0, 4.0])
    # below the median one slope, above it another: the upper and lower spreads scale differently
    med = reference.median(dim=0).values
    noisy = torch.where(reference > med, 3.0 * (reference - med), 0.5 * (reference - med)) + 0.7
    scale, bias = Romer(percentiles=percentiles)._affine(noisy, reference)
    lo, mid, hi = (p / 100 for p in percentiles)
    z, zn = reference.double().numpy(), noisy.double().numpy()
    q = lambda x, p: np.quantile(x, p, axis=0)  # noqa: E731
    expected = (q(z, hi) - q(z, lo)) / (q(zn, hi) - q(zn, lo))
    assert np.allclose(scale.numpy(), expected, rtol=1e-5)
    assert np.allclose(bias.numpy(), q(z, mid) - expected * q(zn, mid), atol=1e-4)
    upper_only = (q(z, hi) - q(z, mid)) / (q(zn, hi) - q(zn, mid))
    assert not np.allclose(scale.numpy(), upper_only, rtol=0.05)  # the class of bug this test exists for


@pytest.mark.parametrize("family", ["softmax", "softmax_norm", "sigmoid"])
def test_masked_expert_leaves_the_softmax_and_the_others_renormalise(family):
    """docs/romer.md: without norm_topk_prob the others' weights grow by 1 / (1 - p_masked) per token;
    renormalising or sigmoid families are unaffected (their weights of unmasked experts do not change)."""
    from romer_aihwkit.adapters.routing import RoutingSpec, route

    spec = {"softmax": RoutingSpec(8, 2, "softmax", False), "softmax_norm": RoutingSpec(8, 2, "softmax", True),
            "sigmoid": RoutingSpec(8, 2, "sigmoid", False)}[family]
    logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(3))
    masked = torch.zeros(8, dtype=torch.bool)
    masked[[1, 5]] = True
    weights, selected = route(spec, logits, masked=masked)
    assert not torch.isin(selected, torch.tensor([1, 5])).any()
    p = logits.softmax(-1)
    if family == "softmax":
        expected = p.gather(1, selected) / (1 - p[:, [1, 5]].sum(-1, keepdim=True))
    elif family == "softmax_norm":
        chosen = p.gather(1, selected)
        expected = chosen / chosen.sum(-1, keepdim=True)
    else:
        expected = logits.sigmoid().gather(1, selected)
    assert torch.allclose(weights, expected, atol=1e-6)
    # the selection is the top-k of the unmasked experts
    assert torch.equal(selected.sort(-1).values, logits.masked_fill(masked, float("-inf")).topk(2).indices.sort(-1).values)


class _Router:
    def __init__(self, e, top_k=2):
        from romer_aihwkit.adapters.routing import RoutingSpec

        self.spec = RoutingSpec(e, top_k)


@pytest.mark.parametrize("tau", [0.1, 0.25, 0.5, 0.9])
def test_replacement_threshold_is_tau_over_e(tau):
    """Cold = load strictly below tau / E; cold experts paired coldest-with-hottest, while hot experts last."""
    from romer_aihwkit.calibration.romer import Romer

    e = 16
    threshold = tau / e
    # loads on both sides of the threshold, one exactly at it (not cold), then normalised to sum 1
    cold_loads = [0.0, 0.2 * threshold, 0.5 * threshold, 0.99 * threshold]
    load = torch.tensor(cold_loads + [threshold] + [0.0] * (e - 5), dtype=torch.float64)
    rest = 1.0 - float(load.sum())
    weights = torch.arange(1, e - 4, dtype=torch.float64)
    load[5:] = threshold + (rest - (e - 5) * threshold) * weights / weights.sum()
    assert abs(float(load.sum()) - 1.0) < 1e-12 and all(float(load[i]) >= threshold for i in range(4, e))
    pairs = Romer(tau=tau, normalize=False, max_masked_share=None)._pairs(load, _Router(e), [True] * e)
    assert [c for c, _ in pairs] == [0, 1, 2, 3]  # coldest first, the one at the threshold kept
    hottest = torch.argsort(load, descending=True).tolist()
    assert [h for _, h in pairs] == hottest[:4]


@pytest.mark.parametrize("cap,expected", [(None, 6), (0.25, 4), (0.125, 2), (0.0, 0)])
def test_replacement_budget_caps_the_masked_share_per_layer(cap, expected):
    from romer_aihwkit.calibration.romer import Romer

    e = 16
    load = torch.tensor([0.0] * 6 + [0.1] * 10, dtype=torch.float64)
    load = load / load.sum()
    pairs = Romer(tau=0.5, normalize=False, max_masked_share=cap)._pairs(load, _Router(e), [True] * e)
    assert len(pairs) == expected
    assert [c for c, _ in pairs] == list(range(expected))  # the coldest ones


def test_bad_replacement_budget():
    with pytest.raises(ValueError, match="max_masked_share"):
        ra.Romer(max_masked_share=1.5)


def test_calibration_does_not_depend_on_the_global_random_state():
    """The same chip and data give the same calibration, whatever the caller did to torch's generator."""
    tokens = calib_tokens()

    def run(before):
        model = converted(device="pcm", seed=4)
        torch.manual_seed(before)
        state = torch.get_rng_state()
        report = ra.calibrate(model, tokens, callbacks=[ra.Romer(tau=0.9)], progress=False)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
        routers = find_routers(model)
        return report.to_dict(), [(r.logit_scale.clone(), r.logit_bias.clone(), r.expert_mask.clone()) for r in routers]

    a, b = run(0), run(7)
    assert json.dumps(a[0], sort_keys=True) == json.dumps(b[0], sort_keys=True)
    for x, y in zip(a[1], b[1]):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    # an explicit seed is another, equally reproducible draw of the read noise
    model = converted(device="pcm", seed=4)
    other = ra.calibrate(model, tokens, callbacks=[ra.Romer(tau=0.9)], progress=False, seed=123).to_dict()
    assert json.dumps(other, sort_keys=True) != json.dumps(a[0], sort_keys=True)
