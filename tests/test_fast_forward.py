"""The batched analog forward (romer_aihwkit.analog.fast) against AIHWKit's own TorchInferenceTile forward."""

import warnings

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import fast
from romer_aihwkit.analog.matrix import AnalogMatrix

SPLIT = dict(max_input_size=16, max_output_size=16)
CASES = [
    ("ideal", {}),
    ("pcm", {}),
    ("rram-wan2022", {}),
    ("gaussian-5", {}),
    ("pcm", SPLIT),  # 40 x 24 on 16 x 16 tiles: 2 input slices x 3 output tiles
    ("pcm", {"drift_compensation": "per-column", "weight_remap": "layerwise_symmetric"}),
    ("pcm", {"noise_management": "none", "input_range": {"enable": True, "init_value": 2.5}}),
]


def _matrix(name, overrides, seed=0, shape=(40, 24), aihwkit_programming=False):
    cfg = ra.load_device_config(name).replace(**overrides).torch_tile_subset()  # the torch tiles are the reference
    g = torch.Generator().manual_seed(seed)
    m = AnalogMatrix(0.3 * torch.randn(*shape, generator=g), None, cfg.rpu_config(), "expert", f"m{seed}",
                     aihwkit_programming=aihwkit_programming)
    m.program(seed)
    m.drift(cfg.t_inference, seed)
    return m


def _both(m, x):
    with torch.no_grad():
        m.fast_forward = True
        y_fast = m(x)
        assert m._fast_plan is not None, "fast path fell back"
        m.fast_forward = False
        y_ref = m(x)
        m.fast_forward = None
    return y_fast, y_ref


def _step(m):
    f = next(m.analog.analog_tiles()).rpu_config.forward
    scale = m.analog.get_weights()[0].abs().max().item()  # output step in weight units, generous
    return scale * 2 * f.out_bound / f.out_res if f.out_res > 0 else 0.0


@pytest.mark.parametrize("name,overrides", CASES, ids=[f"{n}{'-' + '-'.join(o) if o else ''}" for n, o in CASES])
def test_equal_to_aihwkit_with_output_noise_off(name, overrides):
    m = _matrix(name, {**overrides, "out_noise": 0.0})
    x = torch.randn(96, 24, generator=torch.Generator().manual_seed(0))
    x[3] = 0.0  # an all-zero row among others
    y_fast, y_ref = _both(m, x)
    diff = (y_fast - y_ref).abs()
    tol = 1e-5 * (1 + y_ref.abs().max().item())
    # ADC rounding may flip at an exact .5 boundary for a rare entry: at most one step there
    flips = diff > tol
    assert flips.float().mean() < 1e-3 and diff.max() <= tol + _step(m) + 1e-6, diff.max()


def test_all_zero_input_gives_exact_zero_like_aihwkit():
    m = _matrix("pcm", {})
    y_fast, y_ref = _both(m, torch.zeros(4, 24))
    assert torch.equal(y_fast, torch.zeros_like(y_fast)) and torch.equal(y_ref, y_fast)


@pytest.mark.parametrize("overrides", [{}, SPLIT], ids=["one-tile", "split"])
def test_output_noise_statistics_match_aihwkit(overrides):
    m = _matrix("pcm", overrides)
    clean = _matrix("pcm", {**overrides, "out_noise": 0.0})
    x = torch.randn(64, 24)
    with torch.no_grad():
        clean.fast_forward = False
        y_clean = clean(x)
        res = {}
        for flag in (True, False):
            m.fast_forward = flag
            torch.manual_seed(1)
            res[flag] = torch.stack([m(x) - y_clean for _ in range(40)])
    for d in res.values():
        assert d.mean().abs() < 0.1 * d.std()
    ratio = res[True].std() / res[False].std()
    assert 0.9 < ratio < 1.1, ratio
    if not overrides:  # one tile: the very same noise draws as AIHWKit's (rare ADC .5 flips aside)
        assert ((res[True] - res[False]).abs() > 1e-4).float().mean() < 1e-3


def test_per_column_out_noise_values_are_used():
    cfg = ra.load_device_config("pcm")
    rpu = cfg.rpu_config()
    rpu.forward.out_noise_std = 0.5
    m = AnalogMatrix(0.3 * torch.randn(40, 24), None, rpu, "expert", "m")
    m.program(0)
    m.drift(3600.0, 0)
    x = torch.randn(8, 24)
    with torch.no_grad():
        m.fast_forward = True
        torch.manual_seed(3)
        y_fast = m(x)
        m.fast_forward = False
        torch.manual_seed(3)
        y_ref = m(x)
    assert ((y_fast - y_ref).abs() > 1e-4).float().mean() < 1e-2


def test_unsupported_setting_falls_back_with_one_warning():
    cfg = ra.load_device_config("pcm").replace(bound_management="iterative")
    m = AnalogMatrix(0.3 * torch.randn(8, 6), None, cfg.rpu_config(), "expert", "m")
    m.program(0)
    fast._WARNED.clear()
    x = torch.randn(3, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m(x)
        m(x)
    assert sum("bound_management" in str(w.message) for w in caught) == 1
    assert fast.unsupported_reason(cfg.rpu_config()) is not None
    assert fast.unsupported_reason(ra.load_device_config("pcm").rpu_config()) is None


def test_switch_and_hooks_use_aihwkit_forward():
    m = _matrix("pcm", {"out_noise": 0.0})
    x = torch.randn(5, 24)
    calls = []
    tile = next(m.analog.analog_tiles())
    handle = tile.register_forward_pre_hook(lambda mod, args: calls.append(1))
    with torch.no_grad():
        m(x)
    assert calls == [1]  # a hooked tile runs AIHWKit's forward
    handle.remove()
    with torch.no_grad(), fast.fast_forward(False):
        m(x)
    assert calls == [1]
    assert fast.fast_forward_enabled()


def test_redrift_after_released_programming_state_is_exact():
    """AIHWKit's own programming (the shared physics keeps no programming state at all)."""
    a = _matrix("pcm", {"out_noise": 0.0}, aihwkit_programming=True)
    tile = next(a.analog.analog_tiles())
    assert tile.programmed_weights is None and tile.reference_combined_weights is None
    a.drift(86400.0, 0)
    b = _matrix("pcm", {"out_noise": 0.0}, aihwkit_programming=True)
    old = ra.analog.matrix.set_keep_programming_state(True)
    try:
        b.program(0)
        b.drift(3600.0, 0)
        assert next(b.analog.analog_tiles()).programmed_weights is not None
        b.drift(86400.0, 0)
    finally:
        ra.analog.matrix.set_keep_programming_state(old)
    assert torch.equal(a.analog.get_weights()[0], b.analog.get_weights()[0])


def test_split_tiles_share_one_weight_copy():
    m = _matrix("pcm", SPLIT)
    with torch.no_grad():
        m(torch.randn(2, 24))
    tiles = list(m.analog.analog_tiles())
    assert len(tiles) == 6
    blocks = {s.weight.data_ptr() for s in m._fast_plan.slices}
    assert len(blocks) == 2
    assert all(t.tile.weight.untyped_storage().data_ptr() in blocks for t in tiles)


@pytest.mark.parametrize("device", ["pcm", "ideal"])
def test_model_logits_fast_equal_aihwkit(device, tokens):
    model = tiny_model("qwen2_moe")
    ra.convert_to_analog_moe(model, ra.load_device_config(device).replace(out_noise=0.0))
    model.program_analog_weights(seed=2)
    model.drift_analog_weights()
    with torch.no_grad():
        fast_logits = model(tokens).logits
        with fast.fast_forward(False):
            ref = model(tokens).logits
    assert torch.allclose(fast_logits, ref, atol=1e-4, rtol=1e-4), (fast_logits - ref).abs().max()
