"""What a router hands its observers on every forward (:class:`RouterEvent`): a neutral module.

:mod:`.router` creates events and :mod:`.trace` installs observers; both import this module, not
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .router import AnalogRouter

__all__ = ["Observer", "RouterEvent"]


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
"""A callable receiving every :class:`RouterEvent` (installed with :func:`~.trace.trace_routing`)."""
