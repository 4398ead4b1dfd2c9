"""The shared programming physics (:mod:`romer_aihwkit.analog.physics`): distributions, independence, flow."""

import math

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import physics
from romer_aihwkit.analog.matrix import AnalogMatrix
from romer_aihwkit.analog.reference import ReferenceStore
from romer_aihwkit.analog.stacked import AnalogStack
from romer_aihwkit.devices.noise_models import noise_model_spec


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic D."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    both = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, both, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, both, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


# ------------------------------------------------------------------ the exact four-draw PCM model
N = 2**17  # weights per sample
PCM_VARIANTS = [
    {},  # the pcm preset as shipped
    {"g_max": 15.0, "prog_noise_scale": 1.5, "read_noise_scale": 0.7, "drift_scale": 1.3},
    {"read_noise_scale": 0.0, "drift_scale": 0.0},
    {"drift_scale": 0.0},  # diagnosis turns drift off this way: flipped signs have log g = -inf
    {"drift_scale": 0.4},
]


def _clean() -> torch.Tensor:
    w = torch.randn(256, N // 256, generator=torch.Generator().manual_seed(3))
    w[::7] *= 0.05  # many small weights: the regime where the sign of a programmed weight flips
    return w / w.abs().max()


def _aihwkit(nm, w, t_inference, seed):
    torch.manual_seed(seed)
    prog, nu = nm.apply_programming_noise(w)
    return prog if t_inference is None else nm.apply_drift_noise(prog, nu, t_inference)


def _four_draw(pcm, w, t_inference, seed):
    torch.manual_seed(seed)
    prog, nu = physics.pcm_program(w.clone(), pcm, with_nu=t_inference is not None)
    return prog if t_inference is None else physics.pcm_drift(prog, nu, pcm, t_inference)


@pytest.mark.parametrize("overrides", PCM_VARIANTS)
@pytest.mark.parametrize("t_inference", [None, 0.0, 3600.0, 3.15e7])
def test_four_draw_pcm_reproduces_aihwkit_distribution(overrides, t_inference):
    """KS distance to AIHWKit's own PCMLikeNoiseModel on the same clean weights is that of AIHWKit
    against itself (another seed), overall and per weight-magnitude bin; and under the 0.1 % KS
    critical value."""
    config = ra.load_device_config("pcm").replace(**overrides)
    nm = noise_model_spec("pcm").build(config)
    pcm = physics.PcmPhysics.of(nm)
    assert pcm is not None and pcm.g_max == (overrides.get("g_max") or 25.0)
    w = _clean()
    ref = _aihwkit(nm, w, t_inference, 0) - w
    again = _aihwkit(nm, w, t_inference, 1) - w
    mine = _four_draw(pcm, w, t_inference, 2) - w
    assert torch.isfinite(mine).all()  # a NaN sorts last and would slip through the KS statistic
    critical = 1.95 * math.sqrt(2 / N)
    d_self, d_mine = _ks(ref, again), _ks(ref, mine)
    assert d_mine < critical and d_mine < 2.5 * d_self + 0.002, (d_mine, d_self, critical)
    magnitude = w.abs().flatten()
    for lo, hi in ((0.0, 0.01), (0.01, 0.2), (0.2, 1.01)):
        sel = (magnitude >= lo) & (magnitude < hi)
        n = int(sel.sum())
        assert n > 2000
        d = _ks(ref.flatten()[sel], mine.flatten()[sel])
        assert d < 1.95 * math.sqrt(2 / n), (lo, hi, d)


def test_four_draw_pcm_draws_four_normals_per_weight():
    config = ra.load_device_config("pcm")
    pcm = physics.PcmPhysics.of(noise_model_spec("pcm").build(config))
    w = _clean()
    counted = []
    real = torch.randn_like
    real_randn = torch.randn

    def randn_like(x, *a, **k):
        counted.append(x.numel())
        return real(x, *a, **k)

    def randn(*shape, **k):
        out = real_randn(*shape, **k)
        counted.append(out.numel())
        return out

    torch.randn_like, torch.randn = randn_like, randn
    try:
        _four_draw(pcm, w, 3600.0, 0)
    finally:
        torch.randn_like, torch.randn = real, real_randn
    assert sum(counted) == 4 * w.numel()


def test_pcm_presets_use_the_four_draw_model_and_others_aihwkit():
    for preset in ra.list_device_configs():
        recipe = physics.program_recipe(ra.load_device_config(preset).rpu_config())
        assert not isinstance(recipe, str), preset
        assert (recipe.pcm is not None) == (ra.load_device_config(preset).noise_model == "pcm"), preset


# ------------------------------------------------------------------ independence within a matrix
def _repeated_tiles(engine, preset):
    """A 48 x 48 matrix of 3 x 3 identical 16 x 16 tiles, each with identical rows, programmed (no
    drift: its deterministic decay would correlate any two tiles)."""
    row = 0.3 * torch.randn(16, generator=torch.Generator().manual_seed(0))
    w = row.repeat(48, 3)
    cfg = ra.load_device_config(preset).replace(max_input_size=16, max_output_size=16)
    if engine == "stacked":
        stack = AnalogStack(w[None].clone(), ["m"], cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
        stack.program(0)
        programmed = torch.cat([stack.tiles[0][:, i0:i1] * stack.scales[0, s][:, None]
                                for s, (i0, i1) in enumerate(stack.grid.in_bounds)], dim=1)
    else:
        matrix = AnalogMatrix(w, None, cfg.rpu_config(), "expert", "m")
        matrix.program(0)
        with torch.no_grad():
            programmed = matrix.analog.get_weights()[0]
    return programmed - w


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
@pytest.mark.parametrize("preset", ["gaussian-5", "pcm"])
def test_tiles_and_rows_of_one_matrix_draw_independent_noise(engine, preset):
    """Identical tiles with identical rows: every tile and every row must still get its own noise."""
    noise = _repeated_tiles(engine, preset)
    tiles = torch.stack([noise[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].flatten() for r in range(3) for c in range(3)])
    corr = torch.corrcoef(tiles)
    off = corr[~torch.eye(9, dtype=torch.bool)]
    assert off.abs().max() < 0.3, corr  # independent: |r| ~ 1/16 each
    rows = torch.corrcoef(noise)
    off_rows = rows[~torch.eye(48, dtype=torch.bool)].abs()
    assert off_rows.max() < 0.999 and off_rows.mean() < 0.2, off_rows.mean()  # independent: ~0.12
    assert len({tuple(r.tolist()) for r in noise}) == 48


# ------------------------------------------------------------------ programming then drifting: one pass
def test_program_then_drift_costs_one_programming_pass(monkeypatch):
    calls = []
    real = physics._program_tile

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(physics, "_program_tile", counting)
    one = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    one.program_analog_weights(seed=3, t_inference=3600.0)
    n_one = len(calls)
    two = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    two.program_analog_weights(seed=3)
    two.drift_analog_weights(3600.0)
    assert n_one > 0 and len(calls) - n_one == n_one
    a = {n: b for n, b in one.named_buffers() if n.endswith("_tiles") or n.endswith("_scales")}
    b = {n: b for n, b in two.named_buffers() if n.endswith("_tiles") or n.endswith("_scales")}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
def test_a_recorded_chip_is_computed_before_anything_reads_it(engine):
    """Programming without a drift time only records the chip; every reader sees it computed."""
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "gaussian-5", engine=engine)
    model.program_analog_weights(seed=1)
    reference = ra.convert_to_analog_moe(tiny_model("olmoe"), "gaussian-5", engine=engine)
    reference.program_analog_weights(seed=1)
    ids = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.manual_seed(0)
        y = model(ids).logits
    for module in reference.modules():  # read the tiles directly, without a forward first
        if isinstance(module, AnalogStack):
            assert module.pending and module.tiles is not None and not module.pending
        elif isinstance(module, AnalogMatrix):
            assert module.pending and module.analog is not None and not module.pending
    with torch.no_grad():
        torch.manual_seed(0)
        assert torch.equal(reference(ids).logits, y)


def test_progress_bars_are_silenced_by_the_switches(monkeypatch, capsys):
    from romer_aihwkit.analog import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm", progress=False)
    model.program_analog_weights(seed=0, t_inference=60.0, progress=False)
    model.drift_analog_weights(120.0, progress=False)
    assert capsys.readouterr().err == ""
    model.drift_analog_weights(60.0)
    assert "drift" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model.drift_analog_weights(120.0)
    assert capsys.readouterr().err == ""
