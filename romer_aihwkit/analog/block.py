"""A generic MoE block, used where the original block routes inside its own forward (older layouts)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AnalogMoEBlock"]


class AnalogMoEBlock(nn.Module):
    """``router -> experts (+ shared experts)``; returns ``(hidden, router_logits)`` if the original did.

    ``router`` returns ``(logits, weights, indices)`` and ``experts`` takes ``(hidden, indices, weights)``
    (the analog router and experts, or hardware-aware training's tiles).
    """

    def __init__(
        self,
        router: nn.Module,
        experts: nn.Module,
        shared_experts: nn.Module | None = None,
        shared_expert_gate: nn.Module | None = None,
        returns_router_logits: bool = False,
    ) -> None:
        super().__init__()
        self.gate = router
        self.experts = experts
        self.shared_experts = shared_experts
        self.shared_expert_gate = shared_expert_gate
        self.returns_router_logits = returns_router_logits

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        hidden = hidden_states.reshape(-1, shape[-1])
        logits, weights, selected = self.gate(hidden)
        out = self.experts(hidden, selected, weights)
        if self.shared_experts is not None:
            shared = self.shared_experts(hidden)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(hidden)) * shared
            out = out + shared
        out = out.reshape(shape)
        return (out, logits) if self.returns_router_logits else out
