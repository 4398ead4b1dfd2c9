"""The analog side of conversion: :class:`AnalogConversionContext` builds an MoE block's analog modules.

Adapters (:mod:`romer_aihwkit.adapters`) describe a family and call the builder methods of the
:class:`~romer_aihwkit.adapters.ConversionContext` they are handed; this module implements them
with the analog matrices, stacked expert banks, routers and blocks, so the adapters never import
the analog layer. Each matrix asks the conversion's placement (:mod:`.placement`, resolved to a
tile factory per site) once whether it goes analog and on which device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters.base import ExpertLayout
from ..adapters.routing import RoutingSpec
from .block import AnalogMoEBlock
from .engines import AIHWKitEngine, Engine
from .experts import AnalogExperts
from .matrix import WeightMatrix
from .placement import MatrixSite, matrix_site
from .router import AnalogRouter

__all__ = ["AnalogConversionContext"]


@dataclass
class AnalogConversionContext:
    """Builds the analog modules of one MoE block for its adapter (implements
    :class:`romer_aihwkit.adapters.ConversionContext`)."""

    rpu_config_factory: Callable[[], Any]
    """Callable returning a fresh rpu_config of the model's main device (for a bank with no analog matrix)."""
    layer_index: int
    """Index of this MoE block among the model's MoE blocks (``-1``: not in an MoE block, e.g. attention)."""
    block_name: str
    """Fully qualified module name of the block."""
    tiles: Callable[[MatrixSite], Callable[[], Any] | None]
    """The resolved placement: a site's rpu_config factory (its device's), or ``None`` to keep it digital."""
    engine: Engine = field(default_factory=AIHWKitEngine)
    """The engine that builds the matrices and banks (:func:`~romer_aihwkit.analog.engines.resolve_engine`)."""

    def site(self, role: str, name: str, expert: int | None = None) -> MatrixSite:
        """The :class:`MatrixSite` of matrix ``name`` of this block."""
        return matrix_site(self.layer_index, self.block_name, role, name, expert)

    def _factory(self, site: MatrixSite, analog: bool = True) -> Callable[[], Any] | None:
        return self.tiles(site) if analog else None

    def matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str, analog: bool = True,
               expert: int | None = None) -> WeightMatrix:
        factory = self._factory(self.site(role, name, expert), analog)
        return self.engine.matrix(weight, bias, role, f"{self.block_name}.{name}",
                                  factory() if factory is not None else None)

    def experts(self, gate_up: Any, down: Any, act_fn: Any, has_gate: bool = True, gate_up_bias: Any = None,
                down_bias: Any = None, layout: ExpertLayout | None = None) -> AnalogExperts:
        """The block's :class:`~romer_aihwkit.analog.experts.AnalogExperts`.

        Args:
            gate_up: per-expert ``[2I or I, H]`` matrices: a list, or one ``[E, out, in]`` tensor (the
                stacked engine then takes over its storage, like an in-place conversion).
            down: per-expert ``[H, I]`` matrices, likewise.
            act_fn: the experts' activation.
            has_gate: gated (``act(gate) * up``) experts.
            gate_up_bias: per-expert biases or ``None``.
            down_bias: per-expert biases or ``None``.
            layout: how the original model stored the experts (``AnalogExperts.layout``), or ``None``
                for the default (fused, concatenated gate/up, no bias).
        """
        experts = self._experts(gate_up, down, act_fn, has_gate, gate_up_bias, down_bias)
        experts.layout = ExpertLayout.coerce(layout, has_gate)
        return experts

    def _experts(self, gate_up: Any, down: Any, act_fn: Any, has_gate: bool, gate_up_bias: Any,
                 down_bias: Any) -> AnalogExperts:
        n = len(gate_up)
        gu, dn = (self.engine.bank(weights, [f"{self.block_name}.experts.{e}.{part}" for e in range(n)], "expert",
                                   f"{self.block_name}.experts.{part}",
                                   [self._factory(self.site("expert", f"experts.{e}.{part}", e)) for e in range(n)],
                                   bias, default=self.rpu_config_factory)
                  for part, weights, bias in (("gate_up", gate_up, gate_up_bias), ("down", down, down_bias)))
        return AnalogExperts(gu, dn, act_fn, has_gate=has_gate)

    def router(self, weight: torch.Tensor, spec: RoutingSpec, correction_bias: torch.Tensor | None = None) -> AnalogRouter:
        if spec.fp32_logits:
            weight = weight.float()  # the family's router computes in float32: so does its tile
        matrix = self.matrix(weight, None, "router", "router")
        return AnalogRouter(matrix, spec, correction_bias, layer_index=self.layer_index, name=self.block_name)

    def block(self, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None,
              shared_expert_gate: nn.Module | None = None, returns_router_logits: bool = False) -> AnalogMoEBlock:
        """A whole :class:`~romer_aihwkit.analog.block.AnalogMoEBlock` (layouts routing inside their own forward)."""
        if not isinstance(router, AnalogRouter) or not isinstance(experts, AnalogExperts):
            raise TypeError("block() takes the router and experts built by this context's router() and experts()")
        return AnalogMoEBlock(router, experts, shared_experts, shared_expert_gate, returns_router_logits)
