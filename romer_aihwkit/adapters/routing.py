"""How a MoE family turns router logits into (weights, selected experts).

Every adapter describes its family's routing as a :class:`RoutingSpec`; the analog router applies
it to the (noisy, calibrated) logits and the trace applies it to the digital reference logits, so
both sides of every fidelity comparison route the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["RoutingSpec", "route"]


@dataclass(frozen=True)
class RoutingSpec:
    """A family's routing rule, as plain data."""

    num_experts: int
    """Number of routed experts E."""
    top_k: int
    """Experts selected per token."""
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    """Score function applied to the logits (softmax: Mixtral/OLMoE/Qwen/DeepSeek-V2; sigmoid: DeepSeek-V3)."""
    norm_topk_prob: bool = False
    """Renormalise the selected experts' weights to sum to one."""
    n_group: int = 1
    """Expert groups for group-limited routing (DeepSeek); 1 disables it."""
    topk_group: int = 1
    """Groups kept per token when ``n_group > 1``."""
    group_score: Literal["max", "top2_sum"] = "max"
    """How a group is scored: its best expert (DeepSeek-V2) or its two best (DeepSeek-V3)."""
    routed_scaling_factor: float = 1.0
    """Multiplier on the routed experts' weights."""
    uses_correction_bias: bool = False
    """Whether selection adds ``e_score_correction_bias`` to the scores (DeepSeek-V3)."""
    fp32_logits: bool = False
    """Whether the family computes router logits in float32 from float32 inputs (DeepSeek-V2/V3);
    otherwise in the model's dtype, as transformers does. Logits are returned in float32 either way."""

    def __post_init__(self) -> None:
        if self.num_experts < 1 or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"invalid routing: top_k={self.top_k} with {self.num_experts} experts")
        if self.n_group > 1 and (self.num_experts % self.n_group or not 1 <= self.topk_group <= self.n_group):
            raise ValueError(
                f"invalid group routing: {self.num_experts} experts, n_group={self.n_group}, "
                f"topk_group={self.topk_group}"
            )

    def describe(self) -> str:
        parts = [f"{self.scoring} scoring", f"top-{self.top_k} of {self.num_experts}"]
        if self.norm_topk_prob:
            parts.append("renormalised top-k weights")
        if self.n_group > 1:
            parts.append(f"group-limited ({self.topk_group} of {self.n_group} groups, {self.group_score})")
        if self.uses_correction_bias:
            parts.append("score correction bias")
        if self.routed_scaling_factor != 1.0:
            parts.append(f"scaling {self.routed_scaling_factor:g}")
        return ", ".join(parts)


def route(
    spec: RoutingSpec,
    logits: torch.Tensor,
    correction_bias: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select experts from ``logits`` ``[T, E]``.

    Args:
        spec: the family's routing rule.
        logits: router logits, one row per token.
        correction_bias: ``[E]`` bias added to the scores for selection only (DeepSeek-V3).
        masked: ``[E]`` bool, experts that may not be selected (ROMER's replaced experts).

    Returns:
        ``(weights [T, k] float32, indices [T, k] int64)``.
    """
    logits = logits.float()
    if masked is not None and bool(masked.any()):
        if spec.scoring == "softmax":
            # A masked expert leaves the softmax: the others share its probability mass.
            logits = logits.masked_fill(masked, float("-inf"))
    scores = logits.softmax(dim=-1) if spec.scoring == "softmax" else logits.sigmoid()
    choice = scores
    if spec.uses_correction_bias and correction_bias is not None:
        choice = scores + correction_bias.float()
    if masked is not None and bool(masked.any()):
        choice = choice.masked_fill(masked, float("-inf"))
    if spec.n_group > 1:
        grouped = choice.view(-1, spec.n_group, spec.num_experts // spec.n_group)
        if spec.group_score == "top2_sum":
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        else:
            group_scores = grouped.max(dim=-1).values
        group_idx = group_scores.topk(spec.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep = keep.unsqueeze(-1).expand_as(grouped).reshape(-1, spec.num_experts)
        choice = choice.masked_fill(~keep, float("-inf"))
    indices = choice.topk(spec.top_k, dim=-1).indices
    weights = scores.gather(1, indices)
    if spec.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    if spec.routed_scaling_factor != 1.0:
        weights = weights * spec.routed_scaling_factor
    return weights, indices
