"""The router of one MoE layer on its own analog tile, with the calibration hook point."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.routing import RoutingSpec, route
from .events import RouterEvent
from .matrix import WeightMatrix

__all__ = ["AnalogRouter"]


class AnalogRouter(nn.Module):
    """Computes noisy router logits on a tile, applies calibration, then the family's routing.

    Calibrations write only into the digital post-processing installed here:
    ``logit_scale``/``logit_bias`` (per expert, ``z^ = a * z~ + b``) and ``expert_mask``
    (experts that leave routing). All three are persistent buffers, so they move with the model
    and are saved with :func:`romer_aihwkit.save_calibration`.

    ``output="hf"`` returns ``(logits, weights, indices)`` like transformers-5 routers, so the
    original MoE block's forward and ``output_router_logits=True`` keep working.
    """

    matrix: WeightMatrix
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor
    expert_mask: torch.Tensor
    e_score_correction_bias: torch.Tensor | None

    def __init__(
        self,
        matrix: WeightMatrix,
        spec: RoutingSpec,
        correction_bias: torch.Tensor | None = None,
        layer_index: int = 0,
        name: str = "",
    ) -> None:
        super().__init__()
        if matrix.out_features != spec.num_experts:
            raise ValueError(
                f"router matrix has {matrix.out_features} outputs but routing expects {spec.num_experts} experts"
            )
        self.matrix = matrix
        self.spec = spec
        self.layer_index = layer_index
        self.name = name
        self.top_k = spec.top_k
        self.num_experts = spec.num_experts
        self.hidden_dim = matrix.in_features
        e = spec.num_experts
        self.register_buffer("logit_scale", torch.ones(e))
        self.register_buffer("logit_bias", torch.zeros(e))
        self.register_buffer("expert_mask", torch.zeros(e, dtype=torch.bool))
        if correction_bias is not None:
            self.register_buffer("e_score_correction_bias", correction_bias.detach().float().clone())
        else:
            self.e_score_correction_bias = None
        self.observers: list = []

    @property
    def weight(self) -> torch.Tensor:
        """The digital router weights ``[E, H]`` (what was programmed)."""
        return self.matrix.weight

    def reset_calibration(self) -> None:
        self.logit_scale.fill_(1.0)
        self.logit_bias.zero_()
        self.expert_mask.zero_()

    def is_calibrated(self) -> bool:
        return bool((self.logit_scale != 1).any() or (self.logit_bias != 0).any() or self.expert_mask.any())

    def calibrate_logits(self, noisy_logits: torch.Tensor) -> torch.Tensor:
        return noisy_logits.float() * self.logit_scale + self.logit_bias

    def route_logits(self, logits: torch.Tensor, apply_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.expert_mask if apply_mask else None
        return route(self.spec, logits, self.e_score_correction_bias, mask)

    @torch.no_grad()
    def reference_routing(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Digital logits, weights and selection on ``hidden`` (no noise, no calibration)."""
        logits = nn.functional.linear(hidden.float(), self.weight.float())
        weights, selected = route(self.spec, logits, self.e_score_correction_bias, None)
        return logits, weights, selected

    def forward(self, hidden_states: torch.Tensor):
        hidden = hidden_states.reshape(-1, self.hidden_dim)
        # fp32 logits always; computed in fp32 where the family's own router is (DeepSeek-V2/V3)
        noisy = self.matrix.forward_fp32(hidden.float() if self.spec.fp32_logits else hidden)
        if not torch.isfinite(noisy).all():
            raise FloatingPointError(f"router {self.name!r} produced non-finite logits")
        logits = self.calibrate_logits(noisy)
        weights, selected = self.route_logits(logits)
        if self.observers:
            event = RouterEvent(self, hidden.detach(), noisy.detach(), logits.detach(), weights.detach(), selected)
            for observer in list(self.observers):
                observer(event)
        return logits, weights.to(hidden_states.dtype), selected
