"""The one routing-trace mechanism: calibration and evaluation both observe routing through it.

Each :class:`~romer_aihwkit.analog.router.AnalogRouter` hands every forward's routing to the
observers installed with :func:`trace_routing` as a :class:`RouterEvent`. The digital reference
(logits and selection) is computed lazily, only when an observer asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .router import AnalogRouter

__all__ = ["RouterEvent", "experts_of", "find_routers", "trace_routing"]


@dataclass
class RouterEvent:
    """What one MoE layer's router did on one forward."""

    router: AnalogRouter
    hidden: torch.Tensor
    """``[T, H]`` router input (the MoE block's hidden states)."""
    noisy_logits: torch.Tensor
    """``[T, E]`` raw output of the router tile (before any calibration)."""
    logits: torch.Tensor
    """``[T, E]`` logits after the installed corrections (what routing used)."""
    weights: torch.Tensor
    """``[T, k]`` routing weights used."""
    selected: torch.Tensor
    """``[T, k]`` experts used."""
    _reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def layer(self) -> int:
        return self.router.layer_index

    @property
    def num_experts(self) -> int:
        return self.router.spec.num_experts

    def _compute_reference(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._reference is None:
            self._reference = self.router.reference_routing(self.hidden)
        return self._reference

    @property
    def reference_logits(self) -> torch.Tensor:
        """``[T, E]`` digital logits ``h @ W_router^T`` on the same hidden states."""
        return self._compute_reference()[0]

    @property
    def reference_selected(self) -> torch.Tensor:
        """``[T, k]`` experts the digital router would select for the same hidden states."""
        return self._compute_reference()[2]


Observer = Callable[[RouterEvent], None]


def find_routers(model: nn.Module) -> list[AnalogRouter]:
    """The analog routers of a converted model, in layer order."""
    from .router import AnalogRouter

    return [m for m in model.modules() if isinstance(m, AnalogRouter)]


def experts_of(model: nn.Module, router: AnalogRouter):
    """The :class:`~romer_aihwkit.analog.experts.AnalogExperts` routed by ``router``."""
    from .experts import AnalogExperts

    block = model.get_submodule(router.name) if router.name else model
    found = [m for m in block.modules() if isinstance(m, AnalogExperts)]
    if len(found) != 1:
        raise RuntimeError(f"cannot find the experts of MoE block {router.name!r}")
    return found[0]


@contextmanager
def trace_routing(model: nn.Module, observer: Observer) -> Iterator[list[AnalogRouter]]:
    """Call ``observer(event)`` for every router forward inside the ``with`` block."""
    routers = find_routers(model)
    if not routers:
        raise ValueError(
            f"{type(model).__name__} has no analog MoE routers: convert it with "
            "romer_aihwkit.convert_to_analog_moe(...) first"
        )
    for router in routers:
        router.observers.append(observer)
    try:
        yield routers
    finally:
        for router in routers:
            router.observers.remove(observer)
