"""The stacked analog engine: matrices of one shape held as one tensor, physics from AIHWKit.

A MoE layer's routed experts are ``E`` matrices of one shape per projection. AIHWKit's per-matrix
path builds an ``AnalogLinear`` (up to 16 ``TorchInferenceTile`` s) per expert matrix and keeps
several weight copies per tile; at real scale that is minutes of setup and 3-5x the memory. Here
an :class:`AnalogStack` holds ``M`` matrices as one tensor ``[M, out, in]`` (tiles are views of it)
and reproduces what AIHWKit does to each tile:

* **programming, drift and drift compensation**: :func:`romer_aihwkit.analog.physics.program_tiles`,
  the per-tile physics the AIHWKit engine (:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`)
  calls too, so the same seed gives both engines the same chip (tile weights, mapping scales,
  drift compensation), bit for bit;
* **the forward**: AIHWKit's eval-mode periphery per tile input slice (noise management, DAC,
  output noise, ADC, bounds) from :func:`romer_aihwkit.analog.periphery.periphery_mvm`.

Programming and drift happen in one pass per tile (nothing but the drifted tile is kept): a
later drift to another time re-programs from the seed, which is bit-identical, and programming
without a drift time can be recorded lazily (:meth:`AnalogStack.program`), so the documented
``program`` then ``drift`` flow costs one pass. Every tile draws its noise from
``(seed, matrix name, tile position)``. The clean weights live in a
:class:`~romer_aihwkit.analog.reference.ReferenceStore`, not in a second in-memory copy unless asked.

Settings this engine does not reproduce are reported by :func:`unsupported_reason`; conversion then
uses AIHWKit's per-matrix path with a warning naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import periphery as _periphery
from .bank import TileHolder
from .physics import ProgramRecipe, TileGrid, program_recipe, program_tiles, split_sizes
from .reference import ReferenceStore

__all__ = ["AnalogStack", "TileGrid", "TileRecipe", "recipe", "unsupported_reason", "split_sizes"]


TileRecipe = ProgramRecipe
"""What AIHWKit does to a tile (programming, drift, the periphery): see :class:`~romer_aihwkit.analog.physics.ProgramRecipe`."""


def recipe(rpu_config) -> TileRecipe | str:
    """The :class:`TileRecipe` of ``rpu_config``, or a string naming the setting this engine does not reproduce."""
    found = program_recipe(rpu_config)
    if isinstance(found, str):
        return found
    pre_post = getattr(rpu_config, "pre_post", None)
    if pre_post is not None and pre_post.input_range.enable:
        return "static input ranges (pre_post.input_range.enable)"
    if rpu_config.mapping.learn_out_scaling:
        return "mapping.learn_out_scaling"
    return found


def unsupported_reason(rpu_config) -> str | None:
    """``None`` when the stacked engine reproduces ``rpu_config``, else the setting it does not."""
    found = recipe(rpu_config)
    return found if isinstance(found, str) else None


# --------------------------------------------------------------------------- the stack
class AnalogStack(nn.Module, TileHolder):
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

    _tiles: torch.Tensor
    _scales: torch.Tensor
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
        self.register_buffer("_tiles", tiles, persistent=False)
        self.register_buffer("_scales", torch.ones(m, len(self.grid.in_sizes), out_f), persistent=False)
        self.register_buffer("source", torch.arange(m), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.programmed = [not a for a in self.analog]
        """Per matrix: its tiles hold (or, while pending, will hold) a chip instance (digital matrices: always)."""
        self._pending: dict[int, tuple[int, float | None]] = {}
        """Matrices recorded by a lazy :meth:`program`: ``m -> (seed, t_inference)``."""

    # ------------------------------------------------------------------ shape and weights
    @property
    def tiles(self) -> torch.Tensor:
        """``[M, out, in]`` programmed (or digital) weights (computes what a lazy :meth:`program` recorded)."""
        if self._pending:
            self.materialise()
        return self._tiles

    @property
    def scales(self) -> torch.Tensor:
        """``[M, input tiles, out]`` digital output scales per tile (drift compensation, remapping)."""
        if self._pending:
            self.materialise()
        return self._scales

    def __len__(self) -> int:
        return int(self._tiles.shape[0])

    @property
    def out_features(self) -> int:
        return int(self._tiles.shape[1])

    @property
    def in_features(self) -> int:
        return int(self._tiles.shape[2])

    def reference(self, m: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Matrix ``m``'s own clean weights (also while its tiles hold a replica)."""
        return self.store.get(self.key, m, device)

    def set_source(self, m: int, source: int) -> None:
        """Program matrix ``m``'s tiles from matrix ``source``'s clean weights (a replica); needs re-programming."""
        self.source[m] = int(source)
        self._pending.pop(m, None)
        if self.analog[m]:
            self.programmed[m] = False
        else:
            self._tiles[m].copy_(self.reference(source, self._tiles.device))

    def set_reference(self, m: int, weight: torch.Tensor) -> None:
        """Replace matrix ``m``'s clean weights (it must then be re-programmed)."""
        self.store.put(self.key, m, weight.reshape(self.out_features, self.in_features))
        self._pending.pop(m, None)
        if self.analog[m]:
            self.programmed[m] = False
        else:
            self._tiles[m].copy_(weight.reshape(self._tiles[m].shape))

    # ------------------------------------------------------------------ programming
    def program(self, seed: int, t_inference: float | None = None, which: list[int] | None = None,
                lazy: bool = False) -> None:
        """Program matrices ``which`` (default: all analog ones) for chip instance ``seed``; drift them
        to ``t_inference`` when given, in the same pass.

        With ``lazy``, only record the chip: the tiles are computed by :meth:`materialise`, which
        every forward and chip-state read calls first (a later ``program`` with a drift time then
        costs one pass, not two; the result is bit-identical either way).
        """
        t = None if t_inference is None else float(t_inference)
        for m in range(len(self)) if which is None else which:
            if self.analog[m]:
                self._pending[m] = (int(seed), t)
                self.programmed[m] = True
        if not lazy:
            self.materialise()

    @property
    def pending(self) -> int:
        """How many matrices are recorded but not yet computed (see :meth:`program`)."""
        return len(self._pending)

    @torch.no_grad()
    def materialise(self, done: Callable[[int], object] | None = None) -> None:
        """Compute the tiles of every matrix recorded by :meth:`program` (``done(1)`` after each)."""
        device = self._tiles.device
        for m in sorted(self._pending):
            seed, t_inference = self._pending[m]
            ref = self.reference(int(self.source[m]), device)
            tiles, scales = self._tiles[m], self._scales[m]
            for c, _, o0, o1, i0, i1, chip in program_tiles(ref, self.grid, self.recipe, seed, self.names[m],
                                                            t_inference):
                tiles[o0:o1, i0:i1] = chip.weight
                scales[c, o0:o1] = chip.mapping if chip.alpha is None else chip.mapping * chip.alpha
            del self._pending[m]
            if done is not None:
                done(1)

    # ------------------------------------------------------------------ forward
    def mvm(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Matrix ``m`` applied to ``x [n, in]`` through its tiles: ``[n, out]`` float32."""
        w = self.tiles[m]
        if not self.analog[m]:
            y = _periphery.tile_matmul(x, w)
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
                part = _periphery.periphery_mvm(xs, w[:, i0:i1], io)
                if y is None:
                    y = part.mul_(self.scales[m, s])
                else:
                    y.addcmul_(part, self.scales[m, s])
        assert y is not None  # a grid has at least one input tile
        if self.bias is not None:
            y = y + self.bias[m]
        return y

    # ------------------------------------------------------------------ chip state (TileHolder)
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
        self._pending.clear()
        self._tiles.copy_(state["tiles"])
        self._scales.copy_(state["scales"])
        self.source.copy_(state["source"])
        self.programmed = [bool(v) or not a for v, a in zip(state["programmed"].tolist(), self.analog)]

    def extra_repr(self) -> str:
        n_analog = sum(self.analog)
        return (f"{len(self)} x [{self.out_features}, {self.in_features}], {n_analog} analog, "
                f"{self.grid.count} tiles each, tiles {self._tiles.dtype}")
