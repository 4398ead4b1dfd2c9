"""The forward non-idealities of AIHWKit's C++ tiles in the shared periphery (:mod:`romer_aihwkit.analog.periphery`).

Each is checked against a literal, per-vector transcription of RPUCuda's forward IO manager
(``ForwardBackwardPassIOManaged``: ``applyIrDrop``, ``applyVoltageOffsets``,
``applyOutputWeightNoise``, ``finalizeOutput``); deterministic parts to float tolerance, noise by
its per-output std over many draws. Small shapes; the comparison with AIHWKit's C++ tiles
themselves is tests/test_cxx_reference.py (``make test-reference``).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import romer_aihwkit as ra
from romer_aihwkit.analog import periphery
from romer_aihwkit.analog.reference import ReferenceStore
from romer_aihwkit.analog.stacked import AnalogStack
from romer_aihwkit.errors import DeviceConfigError

N_IN, N_OUT = 12, 5


def _io(**fields) -> periphery.Periphery:
    """A non-ideal periphery without DAC/ADC, bounds, noise management or output noise, plus ``fields``."""
    base = periphery.Periphery(perfect=False, nm=0, nm_thres=0.0, inp_res=0.0, inp_bound=math.inf, out_res=0.0,
                    out_bound=math.inf, out_noise=0.0, out_scale=1.0, drift_compensation=False)
    return dataclasses.replace(base, **fields)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(N_OUT, N_IN, generator=g) * 2 - 1)
    x = torch.rand(3, N_IN, generator=g) * 2 - 1
    return w.double(), x.double()


def _ir_drop_literal(w, x, ir_drop, g_ratio):
    """RPUCuda ``applyIrDrop`` for one vector, loop by loop."""
    n = len(x)
    y = [sum(w[i][j] * x[j] for j in range(n)) for i in range(len(w))]
    xp = [x[j] * (1.0 - (1.0 - j / n) ** 2) for j in range(n)]
    for i in range(len(w)):
        a = n / g_ratio * sum(abs(w[i][j]) * abs(x[j]) for j in range(n))
        c = a * (a * (0.05 * a - 0.2) + 0.5)
        y[i] -= c * ir_drop * sum(w[i][j] * xp[j] for j in range(n))
    return y


@pytest.mark.parametrize("ir_drop, g_ratio", [(1.0, 1.0 / 0.35 / 5e-6), (3.0, 50.0)])
def test_ir_drop_is_rpucuda_apply_ir_drop(ir_drop, g_ratio):
    w, x = _data()
    y = periphery.periphery_mvm(x.float(), w.float(), _io(ir_drop=ir_drop, ir_drop_g_ratio=g_ratio))
    ref = torch.tensor([_ir_drop_literal(w.tolist(), row.tolist(), ir_drop, g_ratio) for row in x], dtype=torch.float64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    assert (ref - x @ w.T).abs().max() > (1e-2 if g_ratio < 100 else 1e-6)  # the drop is there to compare


def test_ir_drop_depends_on_input_position():
    """The first input row is farthest from the output: an input there loses nothing, the last the most."""
    w = torch.ones(1, 8)
    io = _io(ir_drop=1.0, ir_drop_g_ratio=4.0)
    first, last = torch.zeros(1, 8), torch.zeros(1, 8)
    first[0, 0], last[0, -1] = 1.0, 1.0
    assert float(periphery.periphery_mvm(first, w, io)) == pytest.approx(1.0)
    assert float(periphery.periphery_mvm(last, w, io)) < 0.9


def _finalize_literal(y, nl, factor, out_bound):
    return [max(-out_bound, min(out_bound, factor * v / (1.0 + abs(nl * v)))) for v in y]


@pytest.mark.parametrize("slope", [0.0, 0.5])
def test_output_nonlinearity_and_slope_calibration(slope):
    w, x = _data(1)
    out_bound = 4.0
    cfg = ra.load_device_config("ideal").replace(out_nonlinearity=0.8, slope_calibration=slope, out_bound=out_bound,
                                                 noise_management="none")
    io = periphery.parse_periphery(cfg.rpu_config())
    assert not isinstance(io, str)
    nl = 0.8 / out_bound
    factor = (1.0 + nl * slope * out_bound) ** 2 if slope else 1.0  # RPUCuda populateFBParameter
    assert io.out_nonlinearity == pytest.approx(nl) and io.nl_factor == pytest.approx(factor)
    y = periphery.periphery_mvm(x.float(), w.float(), io)
    ref = torch.tensor([_finalize_literal((w @ row).tolist(), nl, factor, out_bound) for row in x], dtype=torch.float64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_min", [0.0, -1.0])
def test_series_resistance_is_rpucuda_voltage_offsets(w_min):
    w, x = _data(2)
    rs = 0.3
    y = periphery.periphery_mvm(x.float(), w.float(), _io(r_series=rs, v_offset_w_min=w_min))
    rows = []
    for row in x:
        out = []
        for v in (w @ row).tolist():
            if w_min == 0.0:
                out.append(v / (1 + rs * abs(v)))
            else:
                y_ref = -w_min * float(row.sum())
                out.append((v + y_ref) / (1 + rs * abs(v + y_ref)) - y_ref / (1 + rs * abs(y_ref)))
        rows.append(out)
    torch.testing.assert_close(y.double(), torch.tensor(rows, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", [1, 2])
def test_weight_read_noise_std_and_mean(kind):
    """PCM_READ: std w_noise * sqrt(sum_j |w_ij| x_j^2); ADDITIVE_CONSTANT: w_noise * ||x||; mean unchanged."""
    w, x = _data(3)
    w_noise, draws = 0.1, 20000
    io = _io(w_noise=w_noise, w_noise_type=kind)
    torch.manual_seed(0)
    y = periphery.periphery_mvm(x.float().repeat(draws, 1), w.float(), io).double().reshape(draws, 3, N_OUT)
    if kind == 2:
        expected = w_noise * (x.square() @ w.abs().T).sqrt()
    else:
        expected = (w_noise * x.norm(dim=1, keepdim=True)).expand(3, N_OUT)
    rel = y.std(0) / expected - 1
    assert rel.abs().max() < 5 * math.sqrt(1 / (2 * draws)) + 1e-3, rel
    se = expected / math.sqrt(draws)
    assert ((y.mean(0) - x @ w.T).abs() / se).max() < 5


def test_weight_read_noise_in_dac_units_with_noise_management_and_dac():
    """The std is computed on the DAC's inputs (x / abs-max, quantised) and scaled back, as RPUCuda."""
    w, x = _data(4)
    x = x * 7.0
    io = _io(nm=1, inp_res=2 / 254, inp_bound=1.0, w_noise=0.05, w_noise_type=2)
    torch.manual_seed(0)
    draws = 20000
    y = periphery.periphery_mvm(x.float().repeat(draws, 1), w.float(), io).double().reshape(draws, 3, N_OUT)
    nm = x.abs().amax(dim=1, keepdim=True)
    u = torch.round(x / nm / (2 / 254)) * (2 / 254)
    expected = 0.05 * (u.square() @ w.abs().T).sqrt() * nm
    assert (y.std(0) / expected - 1).abs().max() < 0.04
    torch.testing.assert_close(y.mean(0), (u @ w.T) * nm, atol=float(5 * expected.max() / math.sqrt(draws)), rtol=0)


def test_input_noise_after_the_dac():
    w, x = _data(5)
    io = _io(inp_noise=0.05)
    torch.manual_seed(0)
    draws = 20000
    y = periphery.periphery_mvm(x.float().repeat(draws, 1), w.float(), io).double().reshape(draws, 3, N_OUT)
    expected = 0.05 * w.square().sum(1).sqrt()
    assert (y.std(0) / expected - 1).abs().max() < 0.04


def test_constant_noise_management_scales_by_nm_thres():
    w, x = _data(6)
    x = x * 3.0
    io = _io(nm=3, nm_thres=2.0, inp_res=2 / 254, inp_bound=1.0, out_res=2 * 10 / 254, out_bound=10.0)
    y = periphery.periphery_mvm(x.float(), w.float(), io).double()
    u = torch.clamp(torch.round(x / 2.0 / (2 / 254)) * (2 / 254), -1, 1)  # clipped at the bound: |x| / 2 > 1
    step = 2 * 10 / 254
    ref = torch.clamp(torch.round((u @ w.T) / step) * step, -10, 10) * 2.0
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert (x.abs() > 2.0).any()  # the clip was exercised


def test_one_hot_read_out_is_the_periphery_on_the_identity():
    """Drift compensation's read-out (one-hot inputs) computed elementwise equals the full MVM on eye(n)."""
    w, _ = _data(7)
    w = w.float()
    io = _io(nm=1, inp_res=2 / 254, inp_bound=1.0, out_res=2 * 10 / 254, out_bound=10.0, ir_drop=2.0,
             ir_drop_g_ratio=30.0, r_series=0.1, out_nonlinearity=0.05, nl_factor=1.1)
    full = periphery.periphery_mvm(torch.eye(N_IN), w, io).T
    torch.testing.assert_close(periphery.one_hot_outputs(w, io), full, atol=1e-5, rtol=1e-5)
    noisy = dataclasses.replace(io, w_noise=0.1, w_noise_type=2, out_res=0.0, out_bound=math.inf, ir_drop=0.0,
                                r_series=0.0, out_nonlinearity=0.0, nl_factor=1.0)
    torch.manual_seed(0)
    a = torch.stack([periphery.one_hot_outputs(w, noisy) for _ in range(3000)])
    b = torch.stack([periphery.periphery_mvm(torch.eye(N_IN), w, noisy).T for _ in range(3000)])
    assert ((a.std(0) / b.std(0)) - 1).abs().max() < 0.12
    assert ((a.std(0) / (0.1 * (w.abs().sqrt() * 127 * (2 / 254))).clamp(min=1e-9)) - 1).abs().max() < 0.12


def test_stacked_engine_under_aihwkit_standard():
    """The preset in full on a stack with several tiles: per-MVM noise differs per call and per token, and its
    removal (w_noise 0) leaves a deterministic forward given the chip; bf16 tiles run the same physics."""
    cfg = ra.load_device_config("aihwkit-standard").replace(max_input_size=16, out_noise=0.0, adc_bits=None)
    g = torch.Generator().manual_seed(0)
    w = 0.2 * torch.randn(2, 24, 40, generator=g)
    x = torch.randn(6, 40, generator=g)

    def stack(c, dtype=None):
        s = AnalogStack(w.clone(), ["a", "b"], c.rpu_config(), "expert", ReferenceStore("memory"), "k", tile_dtype=dtype)
        s.program(seed=3, t_inference=3600.0)
        return s

    full = stack(cfg)
    assert full.recipe.io.w_noise_type == 2 and full.recipe.io.ir_drop == 1.0
    y1, y2 = full.mvm(0, x), full.mvm(0, x)
    assert not torch.equal(y1, y2)  # per-MVM read noise is resampled every call
    quiet = stack(cfg.replace(w_noise=0.0, w_noise_type="none"))
    torch.testing.assert_close(quiet.mvm(0, x), quiet.mvm(0, x))
    no_ir = stack(cfg.replace(w_noise=0.0, w_noise_type="none", ir_drop=0.0))
    assert not torch.allclose(quiet.mvm(0, x), no_ir.mvm(0, x), rtol=1e-4, atol=1e-5)  # IR drop acts
    bf16 = stack(cfg.replace(w_noise=0.0, w_noise_type="none"), torch.bfloat16)
    ref = quiet.mvm(1, x)
    assert (bf16.mvm(1, x) - ref).norm() / ref.norm() < 0.02


def test_device_config_fields_and_description():
    cfg = ra.load_device_config("aihwkit-standard")
    rpu = cfg.rpu_config()
    f = rpu.forward
    assert (f.w_noise, f.w_noise_type.value, f.ir_drop, f.inp_res, f.out_res, f.out_noise, f.out_bound) == (
        0.0175, "PCMRead", 1.0, 254.0, 254.0, 0.04, 10.0)
    assert rpu.mapping.max_output_size == 0 and rpu.mapping.weight_scaling_columnwise
    assert rpu.clip.fixed_value == 1.0 and type(rpu.noise_model).__name__ == "PCMLikeNoiseModel"
    modelled = " ".join(cfg.modelled_nonidealities())
    assert "per-MVM weight read noise (pcm_read" in modelled and "IR drop" in modelled
    unmodelled = " ".join(cfg.unmodelled_nonidealities())
    assert "v_offset_std" in unmodelled and "per-MVM" not in unmodelled
    assert "static input ranges" in " ".join(cfg.aihwkit_deviations())
    assert "per-MVM" in " ".join(ra.load_device_config("pcm").unmodelled_nonidealities())
    with pytest.raises(DeviceConfigError, match="w_noise"):
        cfg.replace(w_noise=0.9)  # outside the physical range
    with pytest.raises(DeviceConfigError, match="slope_calibration"):
        ra.load_device_config("pcm").replace(slope_calibration=0.5)
    assert cfg.replace(noise_management="constant", nm_thres=1.0).rpu_config().forward.nm_thres == 1.0
