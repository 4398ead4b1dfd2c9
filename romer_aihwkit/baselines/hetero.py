"""Heterogeneous analog/digital MoE (Chowdhury et al., arXiv 2603.02633, 2026).

The experts most sensitive to analog noise are kept digital. Following the paper, sensitivity is
ranked by the *maximum neuron norm* of each expert: for neuron ``j`` of expert ``e`` the L2 norm of
all weights that touch it (its gate and up rows and its down column), maximised over ``j``. The
top ``fraction`` of experts of each MoE layer (default 12.5 %; the paper reports 12.5-25 % recovers
most of the loss) stay digital, and so does attention (our default anyway).

The split is a placement (:func:`hetero_placement`): the keywords' placement with the selected
experts digital.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..analog.convert import convertible_blocks
from ..analog.placement import KeywordPlacement, default_placement

__all__ = ["hetero_placement", "max_neuron_norms", "select_hetero_experts"]


def max_neuron_norms(gate_up: Sequence[torch.Tensor] | torch.Tensor, down: Sequence[torch.Tensor] | torch.Tensor,
                     has_gate: bool = True) -> torch.Tensor:
    """``[E]`` maximum over neurons of the norm of each neuron's weights."""
    scores = []
    for first, second in zip(gate_up, down):
        first, second = first.float(), second.float()
        rows = first.pow(2).sum(dim=1)
        if has_gate:
            g, u = rows.chunk(2)
            rows = g + u
        per_neuron = rows + second.pow(2).sum(dim=0)
        scores.append(per_neuron.sqrt().max())
    return torch.stack(scores)


def select_hetero_experts(model: nn.Module, fraction: float = 0.125) -> dict[int, list[int]]:
    """``{moe_layer: [experts kept digital]}`` for a digital (not yet converted) model."""

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"hetero fraction must be in [0, 1], got {fraction}")
    selection: dict[int, list[int]] = {}
    for layer, (_, block, adapter) in enumerate(convertible_blocks(model)):
        gate_up, down, has_gate = adapter.expert_weights(block)
        scores = max_neuron_norms(gate_up, down, has_gate)
        n = math.ceil(fraction * len(scores) - 1e-9) if fraction > 0 else 0
        selection[layer] = sorted(torch.argsort(scores, descending=True)[:n].tolist())
    return selection


def hetero_placement(model: nn.Module, device_config: Any, fraction: float = 0.125,
                     analog_router: bool = True) -> KeywordPlacement:
    """The heterogeneous split of a digital (not yet converted) ``model`` as a placement.

    Args:
        model: The digital model (its experts' weights pick the digital ones).
        device_config: The device of every other router and expert matrix.
        fraction: Share of each MoE layer's experts kept digital (:func:`select_hetero_experts`).
        analog_router: Routers on tiles.

    Returns:
        ``default_placement(device_config, analog_router, digital_experts=select_hetero_experts(...))``,
        for ``convert_to_analog_moe(model, placement=...)``.
    """
    return default_placement(device_config, analog_router, digital_experts=select_hetero_experts(model, fraction))
