"""A batched eval-mode forward for AIHWKit ``TorchInferenceTile`` s, with AIHWKit's semantics.

AIHWKit's torch tile is correct but slow per call: every forward goes through ``set_config``,
autograd ``Function`` s, tensor views, a Python loop over the tiles of a ``TileModuleArray`` and a
chain of small periphery ops. :func:`fast_analog_forward` computes the same thing for one
``aihwkit.nn.AnalogLinear`` in eval mode with as few tensor ops as possible. It reads everything
physical *from the tiles* (the programmed and drifted ``tile.tile.weight``, ``mapping_scales``, the
drift-compensation ``alpha``, ``input_range``, ``out_noise_values``); programming noise and drift
stay AIHWKit's (``program_analog_weights`` / ``drift_analog_weights``).

What it reproduces (``TorchInferenceTile.forward`` -> ``joint_forward`` -> ``pre_forward`` ->
``TorchSimulatorTile.forward`` -> ``AnalogMVM.matmul`` -> ``post_forward``, with ``is_test=True``):

* ``forward.is_perfect`` / ``mv_type=IDEAL``: a plain ``x @ W.T``;
* otherwise ``mv_type=ONE_PASS`` without bound management: noise management ``none``,
  ``abs_max``, ``max`` or ``constant`` (with ``nm_thres``), computed per input row *and per tile
  input slice*, including AIHWKit's "all inputs zero -> output exactly zero" shortcut; DAC
  quantization (``inp_res``, deterministic rounding) and clipping at ``inp_bound``; output noise
  ``out_noise`` (scalar) or the per-column ``out_noise_values`` drawn when ``out_noise_std > 0``;
  ADC quantization (``out_res``) and clipping at ``out_bound``; ``out_scale``;
* static input ranges (``pre_post.input_range``: clip to ``[-r, r]``, divide by ``r``, multiply back);
* digital mapping scales (layer- or column-wise weight remapping), drift compensation ``alpha``
  (any ``BaseDriftCompensation``), learned out scales, a digital tile bias;
* tile splitting (``mapping.max_input_size`` / ``max_output_size``): each input slice is
  scaled / quantized on its own, each tile's output is noised / quantized / clipped on its own, and
  the input slices are summed digitally, as ``TileModuleArray`` does.

AIHWKit's C++ tiles (``InferenceRPUConfig``, used by ``engine="aihwkit"`` for the forward
non-idealities only they simulate) always run their own forward: they are the reference.
Everything else falls back to AIHWKit's own forward, with a one-time warning naming the setting:
bound management (``iterative``), input noise, input/output asymmetry, stochastic rounding, other
``mv_type`` s, ``QuantizedTorchInferenceRPUConfig`` periphery quantization, tile classes other than
``TorchInferenceTile`` / ``TileModuleArray``. It also falls back silently (AIHWKit's forward is then
the right one) in training mode, when the input requires grad (AIHWKit back-propagates through its
quantizers with a straight-through estimator; this forward does not), and while a forward hook is
registered on the analog layer or its tiles (e.g. AIHWKit's ``calibrate_input_ranges``).

Memory: no weight copy is made. With one tile per input slice (every matrix with
``in_features <= max_input_size``) the cached weight *is* ``tile.tile.weight``. When a slice has
several output tiles, their weights are concatenated once into one contiguous ``[out, in_slice]``
tensor and each tile's ``weight.data`` is re-pointed to its row block of it, so the tiles and the
fast path share one copy (``set_weights`` / programming / drift replace ``weight.data`` as usual,
which the cache detects by data pointer and rebuilds).

Random numbers: with one tile per matrix the output noise is drawn exactly as AIHWKit draws it
(``randn`` of the output's shape), so a seeded run gives the same noise; with several tiles one
draw per input slice covers all its output tiles (same distribution, different stream order).

Switch: :func:`set_fast_forward` (or the environment variable ``ROMER_AIHWKIT_FAST_FORWARD=0``)
turns this path off globally; ``AnalogMatrix.fast_forward = False`` turns it off for one matrix.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..compat import aihwkit as _compat

__all__ = [
    "FastPlan",
    "fast_analog_forward",
    "fast_forward",
    "fast_forward_enabled",
    "set_fast_forward",
    "unsupported_reason",
]


def _env_enabled() -> bool:
    value = os.environ.get("ROMER_AIHWKIT_FAST_FORWARD", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


_ENABLED = _env_enabled()
_WARNED: set[str] = set()


def set_fast_forward(enabled: bool) -> bool:
    """Use the batched forward (``True``, default) or AIHWKit's own tile forward; returns the old value."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(enabled)
    return old


def fast_forward_enabled() -> bool:
    """Whether analog matrices use the batched forward (see :func:`set_fast_forward`)."""
    return _ENABLED


@contextmanager
def fast_forward(enabled: bool) -> Iterator[None]:
    """Context manager: ``with fast_forward(False): ...`` runs AIHWKit's own forward inside."""
    old = set_fast_forward(enabled)
    try:
        yield
    finally:
        set_fast_forward(old)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _IO:
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


def _parse(rpu_config) -> _IO | str:
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
        return _IO(True, 0, 0.0, 0.0, math.inf, 0.0, math.inf, 0.0, 1.0, drift)
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
    return _IO(
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
    io = _parse(rpu_config)
    return io if isinstance(io, str) else None


def _warn_once(reason: str) -> None:
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    warnings.warn(
        f"romer_aihwkit fast analog forward does not reproduce {reason}; using AIHWKit's own "
        "(slower) tile forward for these matrices",
        RuntimeWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------- the plan
@dataclass
class _Slice:
    start: int
    stop: int
    weight: torch.Tensor  # [out_features, stop - start], shared with the tiles
    tiles: list
    bounds: list[tuple[int, int]]  # output rows of each tile


@dataclass
class FastPlan:
    """The tiles of one analog layer laid out for the batched forward (cached per matrix)."""

    module: nn.Module
    slices: list[_Slice]
    key: tuple
    hook_modules: list[nn.Module]
    tiles: list
    array_bias: torch.Tensor | None


def _key(grid) -> tuple:
    return tuple((id(t), t.tile.weight.data_ptr(), t.tile.weight.device) for row in grid for t in row)


@torch.no_grad()
def _build(linear: nn.Module) -> FastPlan | str:
    module = _compat.analog_module(linear)
    found = _compat.tile_grid(module)
    if isinstance(found, str):
        return found
    grid, in_sizes, out_sizes, bias = found
    slices = []
    start = 0
    for row, size in zip(grid, in_sizes):
        bounds, o = [], 0
        for tile in row:
            bounds.append((o, o + tile.out_size))
            o += tile.out_size
        weight = _compat.slice_weights(row, bounds)
        slices.append(_Slice(start, start + size, weight, row, bounds))
        start += size
    hook_modules = [m for m in linear.modules()]
    return FastPlan(
        module=module,
        slices=slices,
        key=_key(grid),
        hook_modules=hook_modules,
        tiles=[t for row in grid for t in row],
        array_bias=bias,
    )


def _has_hooks(modules: list[nn.Module]) -> bool:
    from torch.nn.modules import module as _m

    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


# --------------------------------------------------------------------------- the forward
def _tile_out(x: torch.Tensor, weight: torch.Tensor, tiles: list, bounds, io: _IO) -> torch.Tensor:
    """One input slice through its output tiles: ``[N, in_slice] -> [N, sum of tile outputs]``.

    All tiles of the slice share the input processing (no static input range, or one tile).
    """
    tile0 = tiles[0]
    input_range = tile0.input_range
    if input_range is not None:  # pre_forward: clip to [-|r|, |r|], divide by r
        r = input_range.detach()
        x = torch.maximum(torch.minimum(x, r.abs()), -r.abs()) / r

    values = [t.tile.out_noise_values for t in tiles]
    sigma = None
    if values[0] is not None:
        sigma = values[0] if len(values) == 1 else torch.cat(values)
    y = periphery_mvm(x, weight, io, sigma)

    # post_forward (input range * mapping scales), drift compensation, learned out scales, bias
    col = _column_scale(tiles, io, y)
    if input_range is not None:
        col = input_range.detach() if col is None else col * input_range.detach()
    if col is not None:
        y.mul_(col)
    bias = [t.bias for t in tiles if t.digital_bias and t.bias is not None]
    if bias:
        y.add_(bias[0].detach() if len(tiles) == 1 else torch.cat([t.bias.detach() for t in tiles]))
    return y


def _matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` in the weight's dtype (tiles may be held in bf16/fp16), returned as float32."""
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    y = x @ weight.T
    return y if y.dtype == torch.float32 else y.float()


def periphery_mvm(x: torch.Tensor, weight: torch.Tensor, io: _IO, sigma: torch.Tensor | None = None) -> torch.Tensor:
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
        return _matmul(x, weight)
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
        y = _matmul(levels, weight)
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


def line_effects(levels: torch.Tensor, weight: torch.Tensor, io: _IO, in_scale: float, step_out: float,
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
    both = _matmul(signed, weight)
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
        absolute = _matmul(inputs, weight.abs())
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


def one_hot_outputs(w: torch.Tensor, io: _IO) -> torch.Tensor:
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


def input_levels(x: torch.Tensor, io: _IO) -> tuple[torch.Tensor, float, torch.Tensor | float, float]:
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


def output_stage(y: torch.Tensor, io: _IO, restore, step_out: float, sigma: torch.Tensor | None = None,
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


def _column_scale(tiles: list, io: _IO, y: torch.Tensor) -> torch.Tensor | None:
    """Mapping scale x drift alpha x learned out scale per output column (``None``: all ones)."""
    parts = []
    for t in tiles:
        s = None
        for value in (
            t.mapping_scales,
            t.alpha if io.drift_compensation else None,
            t.out_scaling_alpha,
        ):
            if value is None:
                continue
            value = value.detach().reshape(-1)
            s = value if s is None else s * value
        parts.append((s, t.out_size))
    if all(s is None for s, _ in parts):
        return None
    if len(parts) == 1:
        return parts[0][0]
    return torch.cat([
        (torch.ones(n, dtype=y.dtype, device=y.device) if s is None else s.expand(n)) for s, n in parts
    ])


def fast_analog_forward(linear: nn.Module, x: torch.Tensor, plan: FastPlan | None) -> tuple[torch.Tensor | None, FastPlan | None]:
    """Eval forward of an ``aihwkit.nn.AnalogLinear`` (or a tile module) on ``x [N, in]``.

    Args:
        linear: the AIHWKit analog layer.
        x: a 2D input.
        plan: the plan returned by the previous call (``None`` on the first call).

    Returns:
        ``(y, plan)``; ``y`` is ``None`` when AIHWKit's own forward must be used instead.
    """
    if linear.training or (x.requires_grad and torch.is_grad_enabled()):
        return None, plan
    module = _compat.analog_module(linear)
    if plan is None or plan.module is not module or plan.key != _key([s.tiles for s in plan.slices]):
        built = _build(linear)
        if isinstance(built, str):
            if built != _compat.CXX_TILES:  # C++ tiles run their own forward, the reference, on purpose
                _warn_once(built)
            return None, None
        plan = built
    if _has_hooks(plan.hook_modules) or any(t.training for t in plan.tiles):
        return None, plan
    io = _parse(plan.tiles[0].rpu_config)  # each tile holds its own copy of the rpu_config
    for tile in plan.tiles[1:]:
        if isinstance(io, str):
            break
        if _parse(tile.rpu_config) != io:
            io = "tiles of one layer with different forward settings"
    if isinstance(io, str):
        _warn_once(io)
        return None, plan

    with torch.no_grad():
        dtype = plan.slices[0].weight.dtype
        x = x.to(dtype)
        y = None
        for s in plan.slices:
            xi = x if len(plan.slices) == 1 else x[:, s.start : s.stop]
            if len(s.tiles) == 1 or all(t.input_range is None for t in s.tiles):
                out = _tile_out(xi, s.weight, s.tiles, s.bounds, io)
            else:  # static input ranges differ per tile: process each tile of the slice on its own
                out = torch.cat(
                    [_tile_out(xi, s.weight[a:b], [t], [(0, b - a)], io) for t, (a, b) in zip(s.tiles, s.bounds)],
                    dim=-1,
                )
            y = out if y is None else y.add_(out)
        assert y is not None  # a plan has at least one slice
        if plan.array_bias is not None:
            y = y + plan.array_bias.detach()
    return y, plan
