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

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..compat import aihwkit as _compat
from ..compat import torch as torch_compat
from .periphery import Periphery, parse_periphery, periphery_mvm, unsupported_reason

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
    found = _compat.fast_forward_grid(module)
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


# --------------------------------------------------------------------------- the forward
def _tile_out(x: torch.Tensor, weight: torch.Tensor, tiles: list, bounds, io: Periphery) -> torch.Tensor:
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


def _column_scale(tiles: list, io: Periphery, y: torch.Tensor) -> torch.Tensor | None:
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
    if torch_compat.has_forward_hooks(plan.hook_modules) or any(t.training for t in plan.tiles):
        return None, plan
    io = parse_periphery(plan.tiles[0].rpu_config)  # each tile holds its own copy of the rpu_config
    for tile in plan.tiles[1:]:
        if isinstance(io, str):
            break
        if parse_periphery(tile.rpu_config) != io:
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
