"""The simulated periphery of one analog tile array: what happens around the analog dot product.

One module for both engines' simulated forward: the stacked engine
(:mod:`romer_aihwkit.analog.stacked`) and the batched forward of AIHWKit's torch tiles
(:mod:`romer_aihwkit.analog.fast`) run every MVM through :func:`periphery_mvm`, and programming
(:mod:`romer_aihwkit.analog.physics`) uses :func:`one_hot_outputs` for the drift-compensation
read-outs. :func:`parse_periphery` reads an rpu_config's eval-mode forward settings into a
:class:`Periphery`, refusing (with the reason) what it does not reproduce.

In AIHWKit's forward order: static input range and noise management (per input row and tile input
slice), DAC quantization and clipping, input noise, the analog sum with the line effects of
AIHWKit's C++ tiles (per-MVM weight read noise, IR drop, series resistance), output noise, the
output non-linearity with its slope calibration, ADC quantization and clipping. Adding a forward
non-ideality means a field of :class:`Periphery`, its parsing in :func:`parse_periphery`, and its
step in :func:`periphery_mvm` (plus its field in the device config's periphery part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "CXX_ONLY_FORWARD",
    "Periphery",
    "cxx_only_settings",
    "line_effects",
    "one_hot_outputs",
    "parse_periphery",
    "periphery_mvm",
    "tile_matmul",
    "unsupported_reason",
]

# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Periphery:
    """The eval-mode forward settings of one rpu_config, in the form the forward needs."""

    perfect: bool
    nm: int  # 0 none, 1 abs_max, 2 max, 3 constant
    nm_thres: float
    inp_res: float  # quantization step of the DAC (0: off)
    inp_bound: float  # clip bound (inf: off)
    out_res: float
    out_bound: float
    out_noise: float
    out_scale: float
    drift_compensation: bool
    # the forward non-idealities of AIHWKit's C++ tiles (RPUCuda's forward IO manager); all off by default
    inp_noise: float = 0.0
    """Gaussian noise added to each DAC output (after clipping), in DAC units."""
    w_noise: float = 0.0
    w_noise_type: int = 0  # 0 none, 1 ADDITIVE_CONSTANT, 2 PCM_READ
    ir_drop: float = 0.0
    ir_drop_g_ratio: float = 1.0 / 0.35 / 5e-6
    r_series: float = 0.0
    v_offset_w_min: float = -1.0
    out_nonlinearity: float = 0.0
    """``n`` of ``y / (1 + n |y|)`` (AIHWKit: ``out_nonlinearity / out_bound``), in output units."""
    nl_factor: float = 1.0
    """Slope calibration factor of the non-linearity (``f**2``; 1: none)."""

    @property
    def line_effects(self) -> bool:
        """Whether any of IR drop, series resistance or weight read noise acts on the analog sum."""
        return self.ir_drop > 0.0 or self.r_series > 0.0 or (self.w_noise > 0.0 and self.w_noise_type != 0)

    @property
    def nonlinear_output(self) -> bool:
        return self.out_nonlinearity > 0.0 or self.r_series > 0.0


CXX_ONLY_FORWARD = ("inp_noise", "w_noise", "ir_drop", "out_nonlinearity", "slope_calibration", "r_series",
                    "v_offset_std", "out_nonlinearity_std", "w_read_asymmetry_dtod")
"""``forward`` settings that AIHWKit's C++ tiles simulate and its torch tiles reject."""


def cxx_only_settings(rpu_config) -> list[str]:
    """The ``forward`` settings of ``rpu_config`` that AIHWKit's torch tiles reject (C++ tiles only)."""
    f = getattr(rpu_config, "forward", None)
    if f is None or f.is_perfect:
        return []
    found = [f"forward.{name}={getattr(f, name)!r}" for name in CXX_ONLY_FORWARD if getattr(f, name, 0.0) > 0.0]
    if str(getattr(f.w_noise_type, "value", f.w_noise_type)) != "None" and f.w_noise > 0.0:
        found.append(f"forward.w_noise_type={f.w_noise_type.value}")
    return found


def _step(res: float, bound: float) -> float:
    """AIHWKit ``UniformQuantize``'s step, computed with the same float operations."""
    res = 1 / res if res > 1.0 else res
    res *= 2 * bound
    return res


def parse_periphery(rpu_config) -> Periphery | str:
    """The settings, or a string saying which setting is not reproduced."""
    from aihwkit.simulator.parameters.enums import (
        AnalogMVType,
        BoundManagementType,
        NoiseManagementType,
        WeightNoiseType,
    )

    f = getattr(rpu_config, "forward", None)
    pre_post = getattr(rpu_config, "pre_post", None)
    if f is None or pre_post is None:
        return f"rpu_config {type(rpu_config).__name__} has no forward/pre_post parameters"
    if hasattr(pre_post, "periph_quant"):
        return "periphery quantization (QuantizedTorchInferenceRPUConfig)"
    drift = getattr(rpu_config, "drift_compensation", None) is not None
    if f.is_perfect or f.mv_type == AnalogMVType.IDEAL:
        return Periphery(True, 0, 0.0, 0.0, math.inf, 0.0, math.inf, 0.0, 1.0, drift)
    if f.mv_type != AnalogMVType.ONE_PASS:
        return f"forward.mv_type={f.mv_type}"
    if f.bound_management != BoundManagementType.NONE:
        return f"forward.bound_management={f.bound_management}"
    nm = {
        NoiseManagementType.NONE: 0,
        NoiseManagementType.ABS_MAX: 1,
        NoiseManagementType.MAX: 2,
        NoiseManagementType.CONSTANT: 3,
    }.get(f.noise_management)
    if nm is None:
        return f"forward.noise_management={f.noise_management}"
    if f.inp_asymmetry != 0.0 or f.out_asymmetry != 0.0:
        return "forward.inp_asymmetry / out_asymmetry"
    if (f.inp_res > 0 and f.inp_sto_round) or (f.out_res > 0 and f.out_sto_round):
        return "stochastic rounding (inp_sto_round / out_sto_round)"
    if (f.inp_res > 0 and f.inp_bound <= 0) or (f.out_res > 0 and f.out_bound <= 0):
        return "quantization without a bound (inp_res/out_res > 0 with inp_bound/out_bound <= 0)"
    # per-output-line values AIHWKit draws once per tile (chip state this forward does not hold)
    for name in ("out_nonlinearity_std", "v_offset_std", "w_read_asymmetry_dtod"):
        if getattr(f, name, 0.0) > 0.0:
            return f"forward.{name} > 0 (a per-tile random draw at tile creation)"
    w_type = {WeightNoiseType.NONE: 0, WeightNoiseType.ADDITIVE_CONSTANT: 1, WeightNoiseType.PCM_READ: 2}.get(
        f.w_noise_type)
    if w_type is None:
        return f"forward.w_noise_type={f.w_noise_type}"
    if f.ir_drop > 0.0 and f.ir_drop_g_ratio <= 0.0:
        return "forward.ir_drop with ir_drop_g_ratio <= 0"
    out_bound = f.out_bound if f.out_bound > 0 else math.inf
    nl_bound = out_bound if math.isfinite(out_bound) else 1.0  # AIHWKit: 1 without an output bound
    out_nl = abs(f.out_nonlinearity / nl_bound) if f.out_nonlinearity > 0.0 else 0.0
    r_series = max(float(f.r_series), 0.0)
    nl_factor = 1.0
    if f.slope_calibration > 0.0 and (out_nl > 0.0 or r_series > 0.0):  # RPUCuda populateFBParameter: f = 1 + (mean n_i + r_series) * slope * bound
        factor = 1.0 + (out_nl + r_series) * f.slope_calibration * nl_bound
        nl_factor = factor * factor
    return Periphery(
        perfect=False,
        nm=nm,
        nm_thres=float(f.nm_thres) if nm != 0 else 0.0,
        inp_res=_step(f.inp_res, f.inp_bound) if f.inp_res > 0 else 0.0,
        inp_bound=f.inp_bound if f.inp_bound > 0 else math.inf,
        out_res=_step(f.out_res, f.out_bound) if f.out_res > 0 else 0.0,
        out_bound=out_bound,
        out_noise=float(f.out_noise),
        out_scale=float(f.out_scale),
        drift_compensation=drift,
        inp_noise=max(float(f.inp_noise), 0.0),
        w_noise=max(float(f.w_noise), 0.0) if w_type else 0.0,
        w_noise_type=w_type if f.w_noise > 0.0 else 0,
        ir_drop=max(float(f.ir_drop), 0.0),
        ir_drop_g_ratio=float(f.ir_drop_g_ratio),
        r_series=r_series,
        v_offset_w_min=float(f.v_offset_w_min),
        out_nonlinearity=out_nl,
        nl_factor=nl_factor,
    )


def unsupported_reason(rpu_config) -> str | None:
    """``None`` when the batched forward reproduces ``rpu_config``'s eval forward, else why not."""
    io = parse_periphery(rpu_config)
    return io if isinstance(io, str) else None



# --------------------------------------------------------------------------- the forward
def tile_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` in the weight's dtype (tiles may be held in bf16/fp16), returned as float32."""
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    y = x @ weight.T
    return y if y.dtype == torch.float32 else y.float()


def periphery_mvm(x: torch.Tensor, weight: torch.Tensor, io: Periphery, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """One analog MVM of AIHWKit's analog tile in eval mode: ``[N, in] x [out, in] -> [N, out]``.

    In the order of RPUCuda's ``ForwardBackwardPassIOManaged::forwardVector`` (which AIHWKit's torch
    tile's ``AnalogMVM.matmul`` follows for the settings it supports): noise management, DAC (clip,
    then input noise), the matmul, the line effects of :func:`line_effects` (IR drop, series
    resistance, weight read noise), then :func:`output_stage` (non-linearity, output noise
    -- scalar ``io.out_noise`` or per-column ``sigma`` --, ADC, output bound), in tile units (no
    mapping scales, no drift alpha). ``weight`` is one input slice of tiles (``in`` <= the tile
    size): IR drop depends on the position of each input in it. Returns float32.
    """
    if io.perfect:
        return tile_matmul(x, weight)
    levels, in_scale, restore, step_out = input_levels(x, io)
    if io.inp_noise > 0.0:  # after the DAC and its clip, in DAC units
        levels.add_(torch.randn_like(levels), alpha=io.inp_noise / (io.inp_res if io.inp_res > 0 else 1.0))
    if (sigma is None and io.out_noise > 0.0 and weight.dtype == torch.float32 and not io.line_effects
            and not io.nonlinear_output):
        # the output noise and the DAC-to-ADC unit change fused into the matmul's epilogue
        y = torch.randn(levels.shape[0], weight.shape[0], dtype=torch.float32, device=levels.device)
        y = torch.addmm(y, levels, weight.T, beta=io.out_noise / step_out, alpha=in_scale)
        return output_stage(y, io, restore, step_out, noise=False)
    extra_var = None
    if io.line_effects:
        # weight read noise and output noise are consecutive, independent Gaussians unless a
        # non-linearity sits between them: then one draw of the summed variance is the same distribution
        y, extra_var = line_effects(levels, weight, io, in_scale, step_out, defer_noise=not io.nonlinear_output)
    else:
        y = tile_matmul(levels, weight)
        if in_scale != 1.0:
            y.mul_(in_scale)
    return output_stage(y, io, restore, step_out, sigma, extra_var=extra_var)


_RAMPS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _ir_ramp(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """RPUCuda ``applyIrDrop``'s input weighting ``1 - (1 - j/n)**2`` of input ``j`` of an ``n``-row tile."""
    key = (n, dtype, device)
    ramp = _RAMPS.get(key)
    if ramp is None:
        p = 1.0 - torch.arange(n, dtype=torch.float32, device=device) / float(n)
        ramp = _RAMPS[key] = (1.0 - p * p).to(dtype)
    return ramp


def line_effects(levels: torch.Tensor, weight: torch.Tensor, io: Periphery, in_scale: float, step_out: float,
                 defer_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The analog sum with RPUCuda's ``applyNonIdealities``, in ADC steps: ``[N, in] levels -> [N, out]``.

    With ``u = levels * in_scale * step_out`` the DAC outputs (tile input units) and ``W`` the tile
    weights (RPUCuda ``ForwardBackwardPassIOManaged``, in its order):

    * IR drop (``ir_drop``, ``ir_drop_g_ratio``): ``a_i = n / g * sum_j |w_ij| |u_j|``,
      ``c_i = a_i (a_i (0.05 a_i - 0.2) + 0.5)``, ``y_i -= ir_drop * c_i * sum_j w_ij u_j (1 - (1 - j/n)^2)``;
    * series resistance (``r_series``, voltage offsets 0): ``y / (1 + r |y|)`` (with the implicit
      reference line of ``v_offset_w_min``: ``(y + y_ref) / (1 + r |y + y_ref|) - y_ref / (1 + r |y_ref|)``,
      ``y_ref = -v_offset_w_min * sum_j u_j``);
    * weight read noise, Gaussian per output and MVM: ``PCM_READ`` std ``w_noise * sqrt(sum_j |w_ij| u_j^2)``,
      ``ADDITIVE_CONSTANT`` std ``w_noise * ||u||``.

    The sums over ``|W|`` are one matmul on ``[|u|; u^2]`` and the two over ``W`` one on
    ``[u; u * ramp]``: no weight sampling, no per-token weight copy.

    Returns ``(y, variance)``: with ``defer_noise`` the weight read noise is not drawn here but its
    variance (in ADC steps squared, ``[N, out]`` or ``[N, 1]``) returned for :func:`output_stage`
    to draw together with the output noise; otherwise it is added and ``variance`` is ``None``.
    """
    n_rows, n_in = levels.shape
    ir = io.ir_drop > 0.0
    pcm = io.w_noise > 0.0 and io.w_noise_type == 2
    signed = levels
    if ir:
        signed = torch.empty(2 * n_rows, n_in, dtype=levels.dtype, device=levels.device)
        signed[:n_rows].copy_(levels)
        torch.mul(levels, _ir_ramp(n_in, levels.dtype, levels.device), out=signed[n_rows:])
    both = tile_matmul(signed, weight)
    y = both[:n_rows]
    if in_scale != 1.0:
        y.mul_(in_scale)
    du = in_scale * step_out  # DAC units per level
    absolute = None
    if ir or pcm:
        inputs = torch.empty((ir + pcm) * n_rows, n_in, dtype=levels.dtype, device=levels.device)
        if ir:
            torch.abs(levels, out=inputs[:n_rows])
        if pcm:
            torch.square(levels, out=inputs[-n_rows:])
        absolute = tile_matmul(inputs, weight.abs())
    if ir:
        assert absolute is not None
        a = absolute[:n_rows].mul_(du * n_in / io.ir_drop_g_ratio)  # n / g * current
        c = a.mul(0.05).sub_(0.2).mul_(a).add_(0.5).mul_(a)  # a (a (0.05 a - 0.2) + 0.5)
        y.sub_(c.mul_(both[n_rows:]).mul_(io.ir_drop * in_scale))
    if io.r_series > 0.0:
        y.mul_(step_out)  # output units
        rs = io.r_series
        if io.v_offset_w_min == 0.0:
            y.div_(y.abs().mul_(rs).add_(1.0))
        else:
            y_ref = (levels.sum(dim=-1, keepdim=True) * (-io.v_offset_w_min * du))
            y.add_(y_ref)
            y.div_(y.abs().mul_(rs).add_(1.0)).sub_(y_ref / (y_ref.abs() * rs + 1.0))
        y.div_(step_out)
    if io.w_noise > 0.0 and io.w_noise_type:
        if pcm:
            assert absolute is not None
            var = absolute[-n_rows:].clamp_(min=0.0)
        else:
            var = levels.square().sum(dim=-1, keepdim=True)
        var.mul_((io.w_noise * in_scale) ** 2)
        if defer_noise:
            return y, var
        y.addcmul_(torch.randn_like(y), var.sqrt_())
    return y, None


def one_hot_outputs(w: torch.Tensor, io: Periphery) -> torch.Tensor:
    """The tile's outputs for one-hot inputs (AIHWKit's drift-compensation read-out), ``[out, in]``:
    entry ``[o, j]`` is output ``o`` for the input ``e_j``, with the whole noisy periphery.

    With one input on, every step of :func:`periphery_mvm` is elementwise, so no ``in x in x out``
    matmul is needed (except with input noise, which turns every input on: then it is the matmul).
    """
    if io.perfect:
        return w.float()
    n = w.shape[1]
    if io.inp_noise > 0.0:
        return periphery_mvm(torch.eye(n, dtype=torch.float32, device=w.device), w, io).T
    one = torch.ones(1, 1, dtype=torch.float32, device=w.device)
    levels, in_scale, restore, step_out = input_levels(one, io)
    level = float(levels)
    y = w.float() * (level * in_scale)
    if io.line_effects:
        du = in_scale * step_out
        if io.ir_drop > 0.0:
            a = w.abs().float().mul_(abs(level) * du * n / io.ir_drop_g_ratio)
            c = a * (a * (0.05 * a - 0.2) + 0.5)
            y.sub_(c.mul_(y).mul_(_ir_ramp(n, torch.float32, w.device)).mul_(io.ir_drop))
        if io.r_series > 0.0:
            y.mul_(step_out)
            rs = io.r_series
            if io.v_offset_w_min == 0.0:
                y.div_(y.abs().mul_(rs).add_(1.0))
            else:
                y_ref = -io.v_offset_w_min * level * du
                y.add_(y_ref)
                y.div_(y.abs().mul_(rs).add_(1.0)).sub_(y_ref / (abs(y_ref) * rs + 1.0))
            y.div_(step_out)
        if io.w_noise > 0.0 and io.w_noise_type:
            std = abs(level) * io.w_noise * in_scale
            if io.w_noise_type == 2:
                y.addcmul_(torch.randn_like(y), w.abs().float().sqrt_(), value=std)
            else:
                y.add_(torch.randn_like(y), alpha=std)
    return output_stage(y, io, restore, step_out)


def input_levels(x: torch.Tensor, io: Periphery) -> tuple[torch.Tensor, float, torch.Tensor | float, float]:
    """Noise management and DAC: ``(levels, in_scale, restore, step_out)``.

    ``levels * in_scale`` are the inputs in ADC steps (with a DAC, ``levels`` are AIHWKit's integer
    DAC levels), ``restore`` is the per-row factor that brings the ADC output back (noise management
    scale x ``out_scale``), ``step_out`` the ADC step.
    """
    # AIHWKit: xs = quant(x / nm) (clip), y = xs @ W.T, then noise, ADC, * nm. Here the DAC levels
    # are kept as integers k = round(x / nm / step_in) and rescaled to ADC units (step_in /
    # step_out) by the matmul, so the output needs no division: the same values as AIHWKit up to
    # float rounding of the last bit.
    x = x.float()
    in_mult: torch.Tensor | float
    restore: torch.Tensor | float
    if io.nm in (1, 2):
        nm = (x.abs() if io.nm == 1 else x).amax(dim=-1, keepdim=True)
        if io.nm_thres > 0.0:
            nm = nm.clamp(max=io.nm_thres)
        nonzero = (nm != 0.0).any()  # AIHWKit: an all-zero input gives an exactly zero output
        nm = nm.masked_fill(nm <= 0.0, 1.0)
        in_mult = 1.0 / nm
        restore = (nm * io.out_scale) * nonzero
    else:
        const = (io.nm_thres if io.nm_thres > 0.0 else 1.0) if io.nm == 3 else 1.0
        in_mult, restore = 1.0 / const, io.out_scale * const
    step_out = io.out_res if io.out_res > 0 else 1.0
    if io.inp_res > 0:  # DAC: integer levels
        levels = x * (in_mult / io.inp_res)
        levels.round_()
        # |x / abs_max| <= 1 <= inp_bound: the clip cannot bite, skip it
        if math.isfinite(io.inp_bound) and not (io.nm == 1 and io.nm_thres <= 0.0 and io.inp_bound >= 1.0):
            level = io.inp_bound / io.inp_res
            levels.clamp_(-level, level)
        return levels, io.inp_res / step_out, restore, step_out
    levels = x * in_mult if not (isinstance(in_mult, float) and in_mult == 1.0) else x.clone()
    if math.isfinite(io.inp_bound):
        levels.clamp_(-io.inp_bound, io.inp_bound)
    return levels, 1.0 / step_out, restore, step_out


def output_stage(y: torch.Tensor, io: Periphery, restore, step_out: float, sigma: torch.Tensor | None = None,
                 noise: bool = True, extra_var: torch.Tensor | None = None) -> torch.Tensor:
    """Output non-linearity, output noise (unless ``noise=False``: already added), ADC and output
    bound on ``y`` (in ADC steps, modified in place), then the restore factor.

    ``extra_var``: the variance of Gaussian noise that acts right before the output noise (the
    weight read noise of :func:`line_effects`), drawn with it in one draw; consumed in place.
    """
    if io.nonlinear_output:  # RPUCuda finalizeOutput: f * y / (1 + |n y|), in output units, before the noise
        y.mul_(io.nl_factor / (y.abs().mul_(io.out_nonlinearity * step_out).add_(1.0)))
    if noise and extra_var is not None:
        if sigma is not None:
            extra_var = extra_var + (sigma.to(y.dtype) / step_out).square()
        elif io.out_noise > 0.0:
            extra_var.add_((io.out_noise / step_out) ** 2)
        y.addcmul_(torch.randn_like(y), extra_var.sqrt_())
    elif noise and sigma is not None:  # per-column values if the tiles drew them (out_noise_std > 0)
        y.addcmul_(torch.randn_like(y), sigma.to(y.dtype) / step_out)
    elif noise and io.out_noise > 0.0:
        y.add_(torch.randn_like(y), alpha=io.out_noise / step_out)
    if io.out_res > 0:  # ADC
        y.round_()
    if math.isfinite(io.out_bound):
        level = io.out_bound / step_out
        y.clamp_(-level, level)
    restore = restore * step_out
    if not (isinstance(restore, float) and restore == 1.0):
        y.mul_(restore)
    return y
