"""The stacked analog engine: matrices of one shape held as one tensor, physics from AIHWKit.

A MoE layer's routed experts are ``E`` matrices of one shape per projection. AIHWKit's per-matrix
path builds an ``AnalogLinear`` (up to 16 ``TorchInferenceTile`` s) per expert matrix and keeps
several weight copies per tile; at real scale that is minutes of setup and 3-5x the memory. Here
an :class:`AnalogStack` holds ``M`` matrices as one tensor ``[M, out, in]`` (tiles are views of it)
and reproduces what AIHWKit does to each tile:

* **mapping** (``rpu_config.mapping``): per tile, weights divided by their per-row
  (``weight_scaling_columnwise``) or whole-tile abs-max over ``weight_scaling_omega``; the scales
  are applied digitally at the output (AIHWKit ``apply_weight_scaling`` / ``post_forward``);
* **clipping** (``rpu_config.clip``): ``FIXED_VALUE`` / ``LAYER_GAUSSIAN`` on each tile;
* **programming noise, drift, read noise**: AIHWKit's own noise-model object is called on the
  weights (``apply_programming_noise`` / ``apply_drift_noise``). Its conductance converter maps a
  whole tensor with one statistic (abs-max, or min/max for single-device converters); AIHWKit
  calls it once per tile, so each tile is first normalised to the same statistic and scaled back
  afterwards -- the converter then sees per tile exactly what it sees in AIHWKit;
* **drift compensation** (``rpu_config.drift_compensation``, global / per-column): AIHWKit reads
  each tile with one-hot inputs (an identity matrix) through the noisy periphery right after
  programming and after drift, and divides the mean absolute outputs. With one-hot inputs the MVM
  is elementwise, so the read-out is computed elementwise -- the same output noise, ADC rounding and
  bounds -- without the ``in x in x out`` matmul;
* **the forward**: AIHWKit's eval-mode periphery per tile input slice (noise management, DAC,
  output noise, ADC, bounds) from :func:`romer_aihwkit.analog.fast.periphery_mvm`.

Programming and drift happen in one pass per matrix (nothing but the drifted tile is kept): a
later drift to another time re-programs from the seed, which is bit-identical. Every matrix draws
its noise from ``(seed, matrix name)``. The clean weights live in a
:class:`~romer_aihwkit.analog.reference.ReferenceStore`, not in a second in-memory copy unless asked.

Settings this engine does not reproduce are reported by :func:`unsupported_reason`; conversion then
uses AIHWKit's per-matrix path with a warning naming the setting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from . import fast as _fast
from .reference import ReferenceStore
from .seeds import matrix_seed

__all__ = ["AnalogStack", "TileGrid", "TileRecipe", "recipe", "unsupported_reason", "split_sizes"]


def split_sizes(size: int, max_size: int) -> tuple[int, ...]:
    """AIHWKit's ``TileModuleArray.get_split_sizes``: near-equal pieces of at most ``max_size``."""
    if max_size <= 0:
        return (size,)
    n = (size + max_size - 1) // max_size
    base, extra = divmod(size, n)
    return tuple(base + (i < extra) for i in range(n))


@dataclass(frozen=True)
class TileGrid:
    """How one ``[out, in]`` matrix is cut into tiles."""

    out_sizes: tuple[int, ...]
    in_sizes: tuple[int, ...]

    @cached_property
    def in_bounds(self) -> list[tuple[int, int]]:
        return _bounds(self.in_sizes)

    @cached_property
    def out_bounds(self) -> list[tuple[int, int]]:
        return _bounds(self.out_sizes)

    @property
    def count(self) -> int:
        return len(self.out_sizes) * len(self.in_sizes)

    def blocks(self) -> list[tuple[int, int, int, int, int]]:
        """``(input slice index, o0, o1, i0, i1)`` of every tile."""
        return [(s, o0, o1, i0, i1) for s, (i0, i1) in enumerate(self.in_bounds) for o0, o1 in self.out_bounds]


def _bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class TileRecipe:
    """What AIHWKit does to a tile, read from a ``TorchInferenceRPUConfig``."""

    io: _fast._IO
    omega: float
    columnwise: bool
    clip: tuple[str, float, float] | None  # (kind, fixed_value, sigma)
    noise_model: Any
    converter_stat: str  # "absmax" or "minmax"
    compensation: str | None  # None, "global", "global-exact", "per-column"
    max_in: int
    max_out: int

    def grid(self, out_features: int, in_features: int) -> TileGrid:
        return TileGrid(split_sizes(out_features, self.max_out), split_sizes(in_features, self.max_in))


def recipe(rpu_config) -> TileRecipe | str:
    """The :class:`TileRecipe` of ``rpu_config``, or a string naming the setting this engine does not reproduce."""
    from aihwkit.inference.compensation.drift import (
        GlobalDriftCompensation,
        GlobalDriftCompensationWithExactReference,
        PerColumnDriftCompensation,
    )
    from aihwkit.inference.converter.conductance import (
        NPairConductanceConverter,
        SingleDeviceConductanceConverter,
        SinglePairConductanceConverter,
    )
    from aihwkit.simulator.parameters.enums import WeightClipType
    from aihwkit.simulator.tiles.inference import InferenceTile
    from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

    io = _fast._parse(rpu_config)
    if isinstance(io, str):
        return io
    # the torch tiles' forward, or the C++ tiles' (InferenceRPUConfig) with their forward non-idealities
    if getattr(rpu_config, "tile_class", TorchInferenceTile) not in (TorchInferenceTile, InferenceTile):
        return f"tile class {rpu_config.tile_class.__name__}"
    if getattr(rpu_config.forward, "out_noise_std", 0.0) > 0:
        return "forward.out_noise_std > 0 (per-column output noise levels)"
    pre_post = getattr(rpu_config, "pre_post", None)
    if pre_post is not None and pre_post.input_range.enable:
        return "static input ranges (pre_post.input_range.enable)"
    mapping = rpu_config.mapping
    if mapping.learn_out_scaling:
        return "mapping.learn_out_scaling"
    if not mapping.digital_bias:
        return "analog bias (mapping.digital_bias=False)"
    clip = None
    kind = rpu_config.clip.type
    if kind == WeightClipType.FIXED_VALUE:
        clip = ("fixed", float(rpu_config.clip.fixed_value), 0.0)
    elif kind == WeightClipType.LAYER_GAUSSIAN:
        clip = ("gaussian", float(rpu_config.clip.fixed_value), float(rpu_config.clip.sigma))
    elif kind != WeightClipType.NONE:
        return f"clip.type={kind}"
    noise_model = rpu_config.noise_model
    converter = getattr(noise_model, "g_converter", None)
    if type(converter) in (SinglePairConductanceConverter,) or isinstance(converter, NPairConductanceConverter):
        stat = "absmax"
    elif type(converter) is SingleDeviceConductanceConverter:
        stat = "minmax"
    else:
        return f"conductance converter {type(converter).__name__}"
    comp_obj = rpu_config.drift_compensation
    comp = {
        type(None): None,
        GlobalDriftCompensation: "global",
        GlobalDriftCompensationWithExactReference: "global-exact",
        PerColumnDriftCompensation: "per-column",
    }.get(type(comp_obj), "unsupported")
    if comp == "unsupported":
        return f"drift compensation {type(comp_obj).__name__}"
    return TileRecipe(
        io=io,
        omega=float(mapping.weight_scaling_omega or 0.0),
        columnwise=bool(mapping.weight_scaling_columnwise),
        clip=clip,
        noise_model=noise_model,
        converter_stat=stat,
        compensation=comp,
        max_in=int(mapping.max_input_size),
        max_out=int(mapping.max_output_size),
    )


def unsupported_reason(rpu_config) -> str | None:
    """``None`` when the stacked engine reproduces ``rpu_config``, else the setting it does not."""
    found = recipe(rpu_config)
    return found if isinstance(found, str) else None


# --------------------------------------------------------------------------- one matrix's physics
class _TileNorm:
    """Per-tile normalisation so that a converter's whole-tensor statistic equals its per-tile one."""

    def __init__(self, w: torch.Tensor, grid: TileGrid, stat: str) -> None:
        self.grid, self.stat = grid, stat
        self.params: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        for _, o0, o1, i0, i1 in grid.blocks():
            blk = w[o0:o1, i0:i1]
            if stat == "absmax":
                self.params.append((None, blk.abs().amax().clamp(min=1e-7)))
            else:
                lo, hi = blk.amin(), blk.amax()
                self.params.append((lo, (hi - lo).clamp(min=1e-7)))
        self.identity = all(lo is None and float(span) == 1.0 for lo, span in self.params)
        """Every tile already has the converter's statistic (e.g. abs-max 1 after column remapping)."""

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return w
        for (_, o0, o1, i0, i1), (lo, span) in zip(self.grid.blocks(), self.params):
            blk = w[o0:o1, i0:i1]
            if lo is not None:
                blk.sub_(lo)
            blk.div_(span)
        return w

    def undo(self, w: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return w
        for (_, o0, o1, i0, i1), (lo, span) in zip(self.grid.blocks(), self.params):
            blk = w[o0:o1, i0:i1]
            blk.mul_(span)
            if lo is not None:
                blk.add_(lo)
        return w


def _map_to_tiles(w: torch.Tensor, grid: TileGrid, r: TileRecipe) -> torch.Tensor:
    """AIHWKit's weight scaling + clipping, in place on ``w`` (float32); returns scales ``[S_in, out]``."""
    scales = torch.ones(len(grid.in_sizes), w.shape[0], dtype=torch.float32, device=w.device)
    for s, o0, o1, i0, i1 in grid.blocks():
        blk = w[o0:o1, i0:i1]
        if r.omega > 0:
            if r.columnwise:
                alpha = blk.abs().amax(dim=1, keepdim=True) / r.omega
            else:
                alpha = (blk.abs().amax() / r.omega).reshape(1, 1)
            alpha = alpha.masked_fill(alpha == 0.0, 1.0)
            blk.div_(alpha)
            scales[s, o0:o1] = alpha.reshape(-1)
        if r.clip is not None:
            kind, fixed, sigma = r.clip
            if kind == "fixed":
                bound = fixed
            else:
                bound = float(blk.std()) * sigma
                if fixed > 0:
                    bound = min(fixed, bound)
            blk.clamp_(-bound, bound)
    return scales


def _readout(w: torch.Tensor, grid: TileGrid, r: TileRecipe, exact: bool = False) -> torch.Tensor:
    """AIHWKit's drift-compensation read-out of each tile: ``[S_in, out]`` (global: one value per tile).

    AIHWKit sends the identity matrix through the tile's noisy forward (``tile.forward`` with
    ``is_test=True``) and takes ``mean |out|`` over the tile (global) or per output column. With a
    one-hot input row, the MVM output is one weight times the DAC level of a 1: elementwise.
    ``exact``: the ideal read-out (``GlobalDriftCompensationWithExactReference``'s baseline).
    """
    out = torch.ones(len(grid.in_sizes), w.shape[0], dtype=torch.float32, device=w.device)
    noisy = not (r.io.perfect or exact)
    for s, o0, o1, i0, i1 in grid.blocks():
        # [out_t, in_t]: output column o for the one-hot input row i (with IR drop, read noise, ...)
        y = _fast.one_hot_outputs(w[o0:o1, i0:i1], r.io) if noisy else w[o0:o1, i0:i1]
        y = y.abs()
        if r.compensation == "per-column":
            value = y.mean(dim=1).clamp(min=1e-4)
        else:
            value = y.mean().clamp(min=1e-4)
        out[s, o0:o1] = value
    return out


def _block_seed(seed: int, row: int) -> int:
    """The seed of the tile row starting at output row ``row`` of a matrix seeded ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}|rows@{int(row)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def program_matrix(
    reference: torch.Tensor,
    grid: TileGrid,
    r: TileRecipe,
    program_seed: int,
    drift_seed: int | None,
    t_inference: float | None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program (and drift) one matrix like AIHWKit does to its tiles.

    Everything AIHWKit does is per tile, so the matrix is processed one row of tiles at a time
    (float32 temporaries of one tile row, not of the whole matrix), each row with its own seeds
    derived from ``program_seed`` / ``drift_seed``: the chip does not depend on whether it is
    drifted in the same call.

    Args:
        out: where to write the tile weights (any float dtype; default: a new float32 tensor).

    Returns:
        ``(tile weights [out, in], column scales [S_in, out])``: the forward computes
        ``sum_s periphery(x_s, W_s) * scales[s]``.
    """
    device = reference.device
    if out is None:
        out = torch.empty(reference.shape, dtype=torch.float32, device=device)
    scales = torch.ones(len(grid.in_sizes), reference.shape[0], dtype=torch.float32, device=device)
    nm = r.noise_model
    gen_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gen_devices):
        for o0, o1 in grid.out_bounds:
            rows = TileGrid((o1 - o0,), grid.in_sizes)
            w = reference[o0:o1].to(torch.float32, copy=True)
            scales[:, o0:o1] = _map_to_tiles(w, rows, r)
            torch.manual_seed(_block_seed(program_seed, o0))
            baseline = _readout(w, rows, r, exact=True) if r.compensation == "global-exact" else None
            norm = _TileNorm(w, rows, r.converter_stat)
            programmed, nu = nm.apply_programming_noise(norm.apply(w))
            del w
            norm.undo(programmed)
            if r.compensation in ("global", "per-column"):
                baseline = _readout(programmed, rows, r)
            if t_inference is None:
                out[o0:o1] = programmed
                continue
            torch.manual_seed(_block_seed(program_seed if drift_seed is None else drift_seed, o0))
            norm = _TileNorm(programmed, rows, r.converter_stat)
            drifted = nm.apply_drift_noise(norm.apply(programmed), nu, float(t_inference))
            del programmed, nu
            norm.undo(drifted)
            if baseline is not None:
                scales[:, o0:o1] *= baseline / _readout(drifted, rows, r)
            out[o0:o1] = drifted
    return out, scales


# --------------------------------------------------------------------------- the stack
class AnalogStack(nn.Module):
    """``M`` matrices ``[out, in]`` of one shape on analog tiles (or kept digital), programmed together.

    Args:
        weights: ``[M, out, in]`` clean weights. The stack takes over this tensor's storage for its
            tiles (after the store has its own copy), like an in-place conversion.
        names: one fully qualified name per matrix (the noise seed is derived from it).
        rpu_config: a ``TorchInferenceRPUConfig`` (only read).
        role: the matrices' role (``"expert"``, ``"router"``, ...).
        store: where the clean weights are kept.
        key: this stack's key in the store.
        analog: per matrix, ``False`` keeps it digital (e.g. hetero experts).
        bias: ``[M, out]`` digital bias, or ``None``.
        tile_dtype: dtype the programmed tiles are held in (default: the weights' dtype).
    """

    tiles: torch.Tensor
    """``[M, out, in]`` programmed (or digital) weights."""
    scales: torch.Tensor
    """``[M, input tiles, out]`` digital output scales per tile (drift compensation, remapping)."""
    source: torch.Tensor
    """``[M]`` which matrix's clean weights each slot is programmed from (replicas)."""
    bias: torch.Tensor | None

    def __init__(
        self,
        weights: torch.Tensor,
        names: list[str],
        rpu_config,
        role: str,
        store: ReferenceStore,
        key: str,
        analog: list[bool] | None = None,
        bias: torch.Tensor | None = None,
        tile_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        found = recipe(rpu_config)
        if isinstance(found, str):
            raise ValueError(f"the stacked engine does not reproduce {found}; use engine='aihwkit'")
        if weights.dim() != 3 or weights.shape[0] != len(names):
            raise ValueError(f"need [M, out, in] weights and M names, got {tuple(weights.shape)} and {len(names)}")
        self.recipe = found
        self.role = role
        self.names = list(names)
        self.key = key
        self.store = store
        m, out_f, in_f = weights.shape
        self.grid = found.grid(out_f, in_f)
        self.analog = [True] * m if analog is None else [bool(a) for a in analog]
        dtype = tile_dtype or (weights.dtype if weights.is_floating_point() else torch.float32)
        store.add(key, weights)
        tiles = weights.detach()
        if tiles.dtype != dtype or not tiles.is_contiguous():
            tiles = tiles.to(dtype).contiguous()
        self.register_buffer("tiles", tiles, persistent=False)
        self.register_buffer("scales", torch.ones(m, len(self.grid.in_sizes), out_f), persistent=False)
        self.register_buffer("source", torch.arange(m), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.programmed = [not a for a in self.analog]
        """Per matrix: its tiles hold a chip instance (digital matrices: always)."""

    # ------------------------------------------------------------------ shape and weights
    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.tiles.shape[1])

    @property
    def in_features(self) -> int:
        return int(self.tiles.shape[2])

    def reference(self, m: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Matrix ``m``'s own clean weights (also while its tiles hold a replica)."""
        return self.store.get(self.key, m, device)

    def set_source(self, m: int, source: int) -> None:
        """Program matrix ``m``'s tiles from matrix ``source``'s clean weights (a replica); needs re-programming."""
        self.source[m] = int(source)
        if self.analog[m]:
            self.programmed[m] = False
        else:
            self.tiles[m].copy_(self.reference(source, self.tiles.device))

    def set_reference(self, m: int, weight: torch.Tensor) -> None:
        """Replace matrix ``m``'s clean weights (it must then be re-programmed)."""
        self.store.put(self.key, m, weight.reshape(self.out_features, self.in_features))
        if self.analog[m]:
            self.programmed[m] = False
        else:
            self.tiles[m].copy_(weight.reshape(self.tiles[m].shape))

    # ------------------------------------------------------------------ programming
    @torch.no_grad()
    def program(self, seed: int, t_inference: float | None = None, which: list[int] | None = None) -> None:
        """Program matrices ``which`` (default: all analog ones) for chip instance ``seed``; drift them
        to ``t_inference`` when given, in the same pass."""
        device = self.tiles.device
        for m in range(len(self)) if which is None else which:
            if not self.analog[m]:
                continue
            name = self.names[m]
            drift_seed = None if t_inference is None else matrix_seed(seed, name, f"drift@{float(t_inference)!r}")
            ref = self.reference(int(self.source[m]), device)
            _, scales = program_matrix(ref, self.grid, self.recipe, matrix_seed(seed, name, "program"), drift_seed,
                                       t_inference, out=self.tiles[m])
            self.scales[m].copy_(scales)
            self.programmed[m] = True

    # ------------------------------------------------------------------ forward
    def mvm(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Matrix ``m`` applied to ``x [n, in]`` through its tiles: ``[n, out]`` float32."""
        w = self.tiles[m]
        if not self.analog[m]:
            y = _fast._matmul(x, w)
        else:
            if not self.programmed[m]:
                raise RuntimeError(
                    f"matrix {self.names[m]!r} is not programmed: call program_analog_weights(seed=...) first"
                )
            x = x.float()
            io = self.recipe.io
            y = None
            for s, (i0, i1) in enumerate(self.grid.in_bounds):
                xs = x if len(self.grid.in_sizes) == 1 else x[:, i0:i1]
                part = _fast.periphery_mvm(xs, w[:, i0:i1], io)
                if y is None:
                    y = part.mul_(self.scales[m, s])
                else:
                    y.addcmul_(part, self.scales[m, s])
        assert y is not None  # a grid has at least one input tile
        if self.bias is not None:
            y = y + self.bias[m]
        return y

    # ------------------------------------------------------------------ chip state
    def chip_state(self) -> dict[str, torch.Tensor]:
        """Everything that makes this stack one chip instance (for saving)."""
        return {
            "tiles": self.tiles,
            "scales": self.scales,
            "source": self.source,
            "programmed": torch.tensor(self.programmed, dtype=torch.bool),
        }

    def check_chip_state(self, state: dict[str, torch.Tensor]) -> str | None:
        """``None`` when ``state``'s replica sources are valid for this stack (presence, shapes and
        finiteness of every part are checked by the chip-state loader for all modules alike)."""
        src = state["source"]
        if src.numel() and (int(src.min()) < 0 or int(src.max()) >= len(self)):
            return "'source' holds an index out of range"
        return None

    @torch.no_grad()
    def load_chip_state(self, state: dict[str, torch.Tensor]) -> None:
        self.tiles.copy_(state["tiles"])
        self.scales.copy_(state["scales"])
        self.source.copy_(state["source"])
        self.programmed = [bool(v) or not a for v, a in zip(state["programmed"].tolist(), self.analog)]

    def extra_repr(self) -> str:
        n_analog = sum(self.analog)
        return (f"{len(self)} x [{self.out_features}, {self.in_features}], {n_analog} analog, "
                f"{self.grid.count} tiles each, tiles {self.tiles.dtype}")
