"""One weight matrix of the model, held either on AIHWKit analog tiles or digitally.

Every matrix that conversion touches becomes a :class:`WeightMatrix` with a *role* (router,
expert, shared_expert, attention). The analog kind wraps AIHWKit's own ``AnalogLinear`` built from
a ``TorchInferenceRPUConfig``: tile splitting, DAC/ADC and output noise are AIHWKit's tiles'.
Programming, drift and drift compensation are the per-tile physics both engines share
(:func:`~romer_aihwkit.analog.physics.program_tiles`), written into AIHWKit's tiles: a chip
instance is reproducible from ``(seed, matrix name, tile position)``, independent of module order,
and the same chip as the stacked engine's for the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..compat import aihwkit as _compat
from . import fast as _fast
from .bank import TileHolder
from .physics import ProgramRecipe, program_recipe, program_tiles
from .seeds import matrix_seed
from .stacked import AnalogStack

__all__ = [
    "WeightMatrix", "AnalogMatrix", "DigitalMatrix", "StackedMatrix", "ROLES", "matrix_seed",
    "set_keep_programming_state",
]

ROLES = ("router", "expert", "shared_expert", "attention")


class WeightMatrix(nn.Module):
    """Common interface of analog and digital matrices: ``y = x @ W^T (+ b)`` on the last dim."""

    is_analog: bool = False
    weight: torch.Tensor
    """The digital weights ``[out, in]`` this matrix represents."""
    bias: torch.Tensor | None

    def __init__(self, role: str, name: str = "") -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        self.role = role
        self.matrix_name = name

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def program(self, seed: int, t_inference: float | None = None, lazy: bool = False) -> None:  # noqa: B027
        """Program the matrix onto its tiles (one chip instance), and drift it when ``t_inference`` is given.

        With ``lazy``, an analog matrix may only record the chip and compute it at its next forward,
        drift or :meth:`materialise` (the same chip, bit for bit). Digital matrices: nothing to program.
        """

    def drift(self, t_inference: float, seed: int) -> None:  # noqa: B027
        """Let the programmed conductances drift to ``t_inference`` seconds."""

    @property
    def pending(self) -> int:
        """How many lazily recorded matrices are not computed yet."""
        return 0

    def materialise(self, done: Callable[[int], object] | None = None) -> None:  # noqa: B027
        """Compute what a lazy :meth:`program` recorded (``done(1)`` per matrix computed)."""

    def forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        """The forward with a float32 output (router logits), without rounding to ``x``'s dtype."""
        return self(x).float()

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Replace the digital weights this matrix represents (must then be re-programmed)."""
        self.weight.data = weight.detach().to(self.weight).clone()
        if bias is not None:
            if self.bias is None:
                raise ValueError(f"matrix {self.matrix_name!r} has no bias to replace")
            self.bias.data = bias.detach().to(self.weight).clone()


class DigitalMatrix(WeightMatrix):
    """A matrix kept digital (e.g. a hetero-selected expert or a digital router)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str = "") -> None:
        super().__init__(role, name)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class AnalogMatrix(WeightMatrix, TileHolder):
    """A matrix on AIHWKit ``TorchInferenceTile`` s (an ``aihwkit.nn.AnalogLinear``).

    Forward: by default the batched forward of :mod:`romer_aihwkit.analog.fast`, which reproduces
    AIHWKit's eval-mode tile forward from the programmed/drifted tile state (tested against
    ``TorchInferenceTile``); settings it does not reproduce use AIHWKit's own forward. Turn it off
    globally with :func:`romer_aihwkit.analog.fast.set_fast_forward` (or
    ``ROMER_AIHWKIT_FAST_FORWARD=0``), or per matrix with ``matrix.fast_forward = False``.

    Programming (:meth:`program`): the shared per-tile physics writes each tile's weights, mapping
    scales, drift-compensation ``alpha`` and ``drift_baseline`` (into AIHWKit's torch tiles, or its
    C++ tiles, whose own drift-compensation read-out could not be seeded); what is held per matrix is the
    digital reference ``weight`` (in the model's dtype) and the tiles' current weights. A drift to
    another time re-programs from the seed (bit-identical), and programming without a drift time
    may be recorded lazily (computed at the first forward or drift, in one pass).

    Settings the shared physics does not reproduce (:func:`~romer_aihwkit.analog.physics.program_recipe`
    names them; the stacked engine does not run them either) are programmed by AIHWKit's own tile
    methods, seeded per matrix (``native_reason`` says why); see :func:`set_keep_programming_state`
    for that path's memory. ``aihwkit_programming=True`` forces that path (a different chip for the
    same seed, with the same statistics: the reference the shared physics is tested against).
    """

    is_analog = True
    fast_forward: bool | None = None
    """``None``: follow :func:`~romer_aihwkit.analog.fast.fast_forward_enabled`; ``True``/``False``: force."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rpu_config, role: str, name: str = "",
                 aihwkit_programming: bool = False) -> None:
        super().__init__(role, name)
        from aihwkit.nn import AnalogLinear

        out_features, in_features = weight.shape
        # Digital reference in the model's own dtype: programming upcasts it to the tile dtype,
        # which is exact, so keeping an fp32 copy of a bf16/fp16 model would only cost memory.
        dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
        self.weight = nn.Parameter(weight.detach().to(dtype).clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.analog = AnalogLinear(in_features, out_features, bias=False, rpu_config=rpu_config)
        self.analog.eval()
        self.analog.set_weights(self.weight.data.float())
        self.programmed = False
        self.t_inference: float | None = None
        self._fast_plan: _fast.FastPlan | None = None
        self._seed: int | None = None
        self._pending: tuple[int, float | None] | None = None
        found = program_recipe(rpu_config)
        if aihwkit_programming:  # AIHWKit's own tile methods (the statistical reference of the shared physics)
            found = "aihwkit_programming=True"
        self._recipe: ProgramRecipe | None = None
        self._tile_grid: list[list[Any]] = []
        if isinstance(found, str):
            self.native_reason: str | None = found
        else:
            self._recipe = found
            self.native_reason = self._check_grid(found)
        """``None``: programmed by the shared physics; else the setting that needs AIHWKit's own programming."""

    def _check_grid(self, recipe: ProgramRecipe) -> str | None:
        """Keep AIHWKit's tiles by input slice when they are the grid the shared physics programs."""
        found = _compat.tile_grid(_compat.analog_module(self.analog))
        if isinstance(found, str):
            return found
        grid, in_sizes, out_sizes, _ = found
        mine = recipe.grid(self.out_features, self.in_features)
        if tuple(in_sizes) != mine.in_sizes or tuple(out_sizes) != mine.out_sizes:
            raise RuntimeError(f"AIHWKit split {self.matrix_name!r} into tiles {out_sizes} x {in_sizes}, expected "
                               f"{mine.out_sizes} x {mine.in_sizes} (AIHWKit's TileModuleArray split changed?)")
        self._tile_grid = grid
        return None

    def _tiles(self):
        return list(self.analog.analog_tiles())

    def train(self, mode: bool = True) -> AnalogMatrix:
        super().train(mode)
        self.analog.eval()  # AIHWKit tiles here are inference-only; programming requires eval mode
        return self

    def __getattr__(self, name: str) -> Any:
        # ``analog`` (AIHWKit's layer and tiles) never shows a chip that a lazy program only recorded
        if name == "analog" and self.__dict__.get("_pending") is not None:
            self.materialise()
        return super().__getattr__(name)

    def loaded(self) -> None:
        """The tiles were just written from a chip-state file: programmed, nothing pending."""
        self.programmed = True
        self._pending = None
        self._fast_plan = None

    def invalidate_cache(self) -> None:
        """Forget the fast forward's layout (it is also rebuilt automatically when tiles change)."""
        self._fast_plan = None

    def _release(self, keep_programmed: bool) -> None:
        """Drop AIHWKit tile state that is not needed for the forward (see the class docstring)."""
        for tile in self._tiles():
            _compat.release_programming_state(tile, keep_programmed)

    @torch.no_grad()
    def program(self, seed: int, t_inference: float | None = None, lazy: bool = False) -> None:
        """Program this matrix (chip instance ``seed``); with ``t_inference``, also drift it.

        With ``lazy`` (shared physics only), only record the chip: it is computed at the next
        forward, drift or :meth:`materialise`, bit-identical to an eager call.
        """
        if self.native_reason is not None:
            self._program(seed, keep_programmed=True if t_inference is not None else _KEEP_PROGRAMMED)
            if t_inference is not None:
                self.drift(t_inference, seed)
            return
        self._pending = (int(seed), None if t_inference is None else float(t_inference))
        self.programmed = True
        self._seed = int(seed)
        self.t_inference = 0.0 if t_inference is None else float(t_inference)
        if not lazy:
            self.materialise()

    @property
    def pending(self) -> int:
        """1 while a lazily recorded chip is not computed yet, else 0."""
        return int(self._pending is not None)

    @torch.no_grad()
    def materialise(self, done: Callable[[int], object] | None = None) -> None:
        """Compute the chip recorded by a lazy :meth:`program` into AIHWKit's tiles (``done(1)`` after)."""
        if self._pending is None or self._recipe is None:
            return
        seed, t_inference = self._pending
        recipe = self._recipe
        for c, row, _, _, _, _, chip in program_tiles(self.weight.detach(), recipe.grid(*self.weight.shape), recipe,
                                                      seed, self.matrix_name, t_inference):
            _compat.write_tile_chip(self._tile_grid[c][row], chip.weight, chip.mapping if recipe.omega > 0 else None,
                                    chip.alpha, chip.baseline, recipe.compensation is not None)
        self._pending = None
        self._fast_plan = None
        if done is not None:
            done(1)

    def _program(self, seed: int, keep_programmed: bool) -> None:
        self.analog.set_weights(self.weight.data.float())
        for tile in self._tiles():
            _compat.clear_programming_state(tile, noise=False)
        device = self.weight.device
        for tile in self._tiles():
            _compat.clip_tile_weights(tile)  # AIHWKit's clipping, before programming
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(matrix_seed(seed, self.matrix_name, "program"))
            self.analog.program_analog_weights()
            for tile in self._tiles():
                _compat.redraw_out_noise(tile)  # per-column output-noise levels belong to the chip instance
        self.programmed = True
        self.t_inference = 0.0
        self._seed = int(seed)
        self._release(keep_programmed=keep_programmed)
        self._fast_plan = None

    @torch.no_grad()
    def drift(self, t_inference: float, seed: int) -> None:
        if not self.programmed:
            raise RuntimeError(
                f"matrix {self.matrix_name or self.role!r} is not programmed: call "
                "program_analog_weights(seed=...) before drift_analog_weights(...)"
            )
        if self.native_reason is None:
            self.program(seed, t_inference)  # the same chip from its seed, drifted: one pass
            return
        if any(_compat.programming_state_released(t) for t in self._tiles()):
            # the programming state was released (or loaded without it): re-program this chip
            # instance from its seed -- bit-identical programming noise and drift coefficients
            self._program(seed, keep_programmed=True)
        device = self.weight.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(matrix_seed(seed, self.matrix_name, f"drift@{float(t_inference)!r}"))
            self.analog.drift_analog_weights(float(t_inference))
        self.t_inference = float(t_inference)
        self._release(keep_programmed=_KEEP_PROGRAMMED)
        self._fast_plan = None

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().set_reference(weight, bias)
        self.analog.set_weights(self.weight.data.float())
        for tile in self._tiles():
            _compat.clear_programming_state(tile, noise=False)
        self.programmed = False
        self._pending = None
        self._fast_plan = None

    # ------------------------------------------------------------------ chip state (TileHolder)
    def chip_state(self) -> dict[str, torch.Tensor]:
        """Every tile's chip-state tensors, as ``"<tile index>.<part>"``.

        A matrix the shared physics has not programmed yet holds no drift compensation: it reports
        the compensation's parts in the shape programming gives them, so that a chip-state file
        loads onto a freshly converted model as it does onto a programmed one.
        """
        tiles = self._tiles()
        state = {f"{i}.{part}": value for i, tile in enumerate(tiles) for part, value in _compat.tile_state(tile).items()}
        compensation = None if self._recipe is None else self._recipe.compensation
        if not self.programmed and self.native_reason is None and compensation is not None:
            for i, tile in enumerate(tiles):
                shape = (int(tile.out_size),) if compensation == "per-column" else ()
                state[f"{i}.drift_baseline"] = state[f"{i}.alpha"] = torch.ones(shape)
        return state

    def ignores_chip_part(self, part: str) -> bool:
        """AIHWKit programming state a file may hold (written while :func:`set_keep_programming_state`,
        or by versions that programmed with AIHWKit's tile methods): not part of the chip's forward, so
        a matrix programmed by the shared physics accepts and skips it."""
        return self.native_reason is None and _compat.PROGRAMMING_STATE.search("/" + part) is not None

    def load_chip_state(self, state: dict[str, torch.Tensor]) -> None:
        for i, tile in enumerate(self._tiles()):
            _compat.load_tile_state(tile, {key.split(".", 1)[1]: value for key, value in state.items()
                                           if key.split(".", 1)[0] == str(i) and not self.ignores_chip_part(key)})
        self.loaded()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fp32(x).to(x.dtype)

    def forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = None
        use_fast = _fast.fast_forward_enabled() if self.fast_forward is None else self.fast_forward
        if use_fast:
            y, self._fast_plan = _fast.fast_analog_forward(self.analog, x2, self._fast_plan)
        if y is None:
            y = self.analog(x2.float())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], y.shape[-1]).float()


_KEEP_PROGRAMMED = os.environ.get("ROMER_AIHWKIT_KEEP_PROGRAMMED", "0").strip().lower() in ("1", "true", "yes", "on")


def set_keep_programming_state(keep: bool) -> bool:
    """Keep AIHWKit's per-tile programming state in memory (``True``) or release it (default).

    Only for matrices AIHWKit programs itself (``AnalogMatrix.native_reason`` set); the shared
    physics keeps no programming state (a drift re-programs from the seed in one pass).

    Released (default): after ``program``/``drift`` each tile keeps only its current weights, so a
    programmed matrix costs the digital reference plus one tile copy; a later ``drift`` to another
    ``t_inference`` first re-programs from the same seed (bit-identical, at the cost of one more
    programming pass). Kept: AIHWKit's ``programmed_weights`` and drift coefficients stay (two to
    three extra weight copies), and ``save_analog_state`` writes them too. Also settable with
    ``ROMER_AIHWKIT_KEEP_PROGRAMMED=1``. Returns the previous setting.
    """
    global _KEEP_PROGRAMMED
    old, _KEEP_PROGRAMMED = _KEEP_PROGRAMMED, bool(keep)
    return old


class StackedMatrix(WeightMatrix):
    """One matrix on the stacked engine (:class:`~romer_aihwkit.analog.stacked.AnalogStack` of one).

    Used for routers, shared experts and attention projections when ``engine="stacked"``; its clean
    weights live in the stack's reference store.
    """

    is_analog = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rpu_config, role: str, name: str, store) -> None:
        super().__init__(role, name)
        self.stack = AnalogStack(
            weight.detach()[None], [name], rpu_config, role, store, key=name,
            bias=None if bias is None else bias.detach()[None],
        )

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The clean weights this matrix was programmed from."""
        return self.stack.reference(0, self.stack.tiles.device)

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self.stack.bias is None else self.stack.bias[0]

    @property
    def out_features(self) -> int:
        return self.stack.out_features

    @property
    def in_features(self) -> int:
        return self.stack.in_features

    @property
    def programmed(self) -> bool:
        return self.stack.programmed[0]

    def program(self, seed: int, t_inference: float | None = None, lazy: bool = False) -> None:
        self.stack.program(seed, t_inference, lazy=lazy)

    def drift(self, t_inference: float, seed: int) -> None:
        self.stack.program(seed, t_inference)  # re-programs from the seed: the same chip, drifted

    @property
    def pending(self) -> int:
        return self.stack.pending

    def materialise(self, done: Callable[[int], object] | None = None) -> None:
        self.stack.materialise(done)

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.stack.set_reference(0, weight)
        if bias is not None and self.stack.bias is not None:
            self.stack.bias.data[0] = bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fp32(x).to(x.dtype)

    def forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.stack.mvm(0, x.reshape(-1, shape[-1]))
        return y.reshape(*shape[:-1], y.shape[-1])
