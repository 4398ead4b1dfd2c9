"""The engine contract: what every analog engine's matrices answer, so no caller asks which engine.

Two engines hold a converted model's matrices (:mod:`romer_aihwkit.analog.engines` builds them):
the stacked engine (:class:`~romer_aihwkit.analog.stacked.AnalogStack`, matrices of one shape as
one tensor) and the AIHWKit engine (one ``aihwkit.nn.AnalogLinear`` per matrix,
:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`, gathered in a :class:`MatrixBank`). Both
program every tile with the same per-tile physics and seeds, so one seed is one chip in either.

* :class:`AnalogBank`: ``M`` matrices of one role and shape (one projection of every expert):
  program, the MVM, the clean reference weights, replica sources, the analog mask;
* :class:`Programmable`: anything :func:`~romer_aihwkit.analog.programming.program_analog_weights`
  programs (a bank, or one :class:`~romer_aihwkit.analog.matrix.WeightMatrix`);
* :class:`TileHolder`: a module whose tiles are a part of the chip-state file (its own keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from .matrix import WeightMatrix

__all__ = ["AnalogBank", "MatrixBank", "Programmable", "TileHolder"]


@runtime_checkable
class Programmable(Protocol):
    """Matrices programmed together for one chip instance."""

    def program(self, seed: int, t_inference: float | None = None, *, lazy: bool = False) -> None:
        """Program (and drift to ``t_inference``) for chip instance ``seed``; ``lazy``: only record it."""
        ...

    @property
    def pending(self) -> int:
        """How many matrices a lazy :meth:`program` recorded and did not compute yet."""
        ...

    def materialise(self, done: Callable[[int], object] | None = None) -> None:
        """Compute what a lazy :meth:`program` recorded (``done(1)`` per matrix)."""
        ...


@runtime_checkable
class AnalogBank(Programmable, Protocol):
    """``M`` matrices ``[out, in]`` of one role, each analog or kept digital (one projection of every expert)."""

    @property
    def analog(self) -> list[bool]:
        """Per matrix: whether it is on analog tiles."""
        ...

    @property
    def names(self) -> list[str]:
        """Per matrix: its name in the model (the tiles' seeds derive from it)."""
        ...

    def __len__(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    @property
    def in_features(self) -> int: ...

    @property
    def bias(self) -> torch.Tensor | None:
        """``[M, out]`` digital biases, or ``None``."""
        ...

    def program(self, seed: int, t_inference: float | None = None, which: list[int] | None = None,
                lazy: bool = False) -> None:
        """Program matrices ``which`` (default: all analog ones) for chip instance ``seed``, drifted to
        ``t_inference`` when given."""
        ...

    def mvm(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Matrix ``m`` applied to ``x [n, in]``: ``[n, out]`` float32."""
        ...

    def reference(self, m: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Matrix ``m``'s own clean weights (also while its tiles hold a replica)."""
        ...

    def set_source(self, m: int, source: int) -> None:
        """Program matrix ``m``'s tiles from matrix ``source``'s clean weights (a replica; ``source == m``:
        its own again); it must then be re-programmed."""
        ...

    def set_reference(self, m: int, weight: torch.Tensor) -> None:
        """Replace matrix ``m``'s own clean weights (it must then be re-programmed)."""
        ...


class TileHolder:
    """A module whose tiles are one part of a chip-state file, under its own module name.

    :func:`~romer_aihwkit.analog.state_io.save_analog_state` writes :meth:`chip_state` as
    ``"<module name>/<part>"`` keys; :func:`~romer_aihwkit.analog.state_io.load_analog_state` checks
    every part's presence, shape, dtype and finiteness for all holders alike, then asks
    :meth:`check_chip_state` and writes with :meth:`load_chip_state`.
    """

    def chip_state(self) -> dict[str, torch.Tensor]:
        """Everything that makes these tiles one chip instance, by part name (live tensors)."""
        raise NotImplementedError

    def check_chip_state(self, state: dict[str, torch.Tensor]) -> str | None:
        """``None`` when ``state`` (of :meth:`chip_state`'s form) may be loaded, else what is wrong."""
        return None

    def load_chip_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write a checked ``state`` into the tiles."""
        raise NotImplementedError

    def ignores_chip_part(self, part: str) -> bool:
        """Whether a file's ``part`` that :meth:`chip_state` does not hold is state to skip, not a mismatch."""
        return False

    def invalidate_cache(self) -> None:
        """Forget anything derived from the tiles' settings (they were changed from outside)."""


class MatrixBank(nn.ModuleList):
    """A bank of separate :class:`~romer_aihwkit.analog.matrix.WeightMatrix` modules (the AIHWKit engine's)."""

    def __init__(self, matrices: list[WeightMatrix]) -> None:
        super().__init__(matrices)
        self._own: dict[int, torch.Tensor] = {}

    def matrix(self, m: int) -> WeightMatrix:
        """Matrix ``m``."""
        return cast("WeightMatrix", self[m])

    def matrices(self) -> list[WeightMatrix]:
        """Every matrix, in order."""
        return [self.matrix(m) for m in range(len(self))]

    @property
    def analog(self) -> list[bool]:
        return [m.is_analog for m in self.matrices()]

    @property
    def names(self) -> list[str]:
        return [m.matrix_name for m in self.matrices()]

    @property
    def out_features(self) -> int:
        return self.matrix(0).out_features

    @property
    def in_features(self) -> int:
        return self.matrix(0).in_features

    @property
    def bias(self) -> torch.Tensor | None:
        biases = [m.bias for m in self.matrices()]
        return None if any(b is None for b in biases) else torch.stack(cast(list[torch.Tensor], biases))

    def program(self, seed: int, t_inference: float | None = None, which: list[int] | None = None,
                lazy: bool = False) -> None:
        for m in range(len(self)) if which is None else which:
            self.matrix(m).program(seed, t_inference, lazy=lazy)

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.matrices())

    def materialise(self, done: Callable[[int], object] | None = None) -> None:
        for m in self.matrices():
            m.materialise(done)

    def mvm(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return self.matrix(m).forward_fp32(x)

    def reference(self, m: int, device: torch.device | str | None = None) -> torch.Tensor:
        weight = self._own.get(m, self.matrix(m).weight.detach())
        return weight.to(device) if device is not None else weight

    def set_source(self, m: int, source: int) -> None:
        if source == m:
            if m in self._own:
                self.matrix(m).set_reference(self._own.pop(m))
            return
        self._own.setdefault(m, self.matrix(m).weight.detach().clone())
        self.matrix(m).set_reference(self.reference(source))

    def set_reference(self, m: int, weight: torch.Tensor) -> None:
        if m in self._own:  # its tiles hold a replica: only its own weights change
            self._own[m] = weight.detach().to(self._own[m]).reshape(self._own[m].shape).clone()
        else:
            self.matrix(m).set_reference(weight.reshape(self.out_features, self.in_features))
