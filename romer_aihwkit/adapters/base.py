"""The adapter contract: what differs between MoE families, and the shared conversion steps.

A family adapter says where a MoE block keeps its router, experts and shared experts and how the
family routes (a :class:`RoutingSpec`). transformers-5 fused experts need no per-family code: the
``@use_experts_implementation`` decorator records their layout on the instance
(``has_gate``, ``has_bias``, ``is_transposed``, ``is_concatenated``), which
:func:`fused_expert_weights` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..compat import transformers as transformers_compat
from ..errors import UserError
from .routing import RoutingSpec

__all__ = ["MoEAdapter", "ConversionContext", "ExpertLayout", "fused_expert_weights", "convert_linears",
           "UnsupportedLayoutError"]


class UnsupportedLayoutError(UserError, ValueError):
    """A MoE block whose layout this adapter cannot convert faithfully."""


@dataclass(frozen=True)
class ExpertLayout:
    """How the original model stores a block's routed experts: what writing their digital weights back needs.

    The converted experts always hold per-expert ``gate_up [2I or I, H]`` (gate rows, then up rows)
    and ``down [H, I]`` matrices; :meth:`state_dict` puts them back under the original names.
    """

    kind: str = "fused"
    """``"fused"``: transformers-5 experts (``gate_up_proj``/``up_proj`` and ``down_proj`` tensors);
    ``"modulelist"``: an ``nn.ModuleList`` of MLPs with three ``nn.Linear`` each."""
    has_gate: bool = True
    transposed: bool = False
    """Fused tensors stored ``[E, in, out]``."""
    concatenated: bool = True
    """Fused gate/up rows stored ``[g; u]`` (``False``: interleaved ``[g0, u0, g1, u1, ...]``)."""
    has_bias: bool = False
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    """``"modulelist"``: the gate, up and down ``nn.Linear`` attributes of each expert."""

    def __post_init__(self) -> None:
        if self.kind not in ("fused", "modulelist"):
            raise UnsupportedLayoutError(f"expert layout kind {self.kind!r} is not 'fused' or 'modulelist'")

    @classmethod
    def coerce(cls, layout: ExpertLayout | Mapping[str, Any] | None, has_gate: bool = True) -> ExpertLayout:
        """``layout`` as an :class:`ExpertLayout` (a mapping of its fields is accepted; ``None``: the default)."""
        if layout is None:
            return cls(has_gate=has_gate)
        if isinstance(layout, ExpertLayout):
            return layout
        fields = dict(layout)
        if "names" in fields:
            fields["names"] = tuple(fields["names"])
        return cls(**fields)

    def state_dict(self, prefix: str, gate_up: Sequence[torch.Tensor], down: Sequence[torch.Tensor],
                   gate_up_bias: torch.Tensor | None = None, down_bias: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """The experts' weights under the original parameter names (``prefix`` ends with a dot).

        Args:
            prefix: The experts module's name plus ``"."``.
            gate_up: Per-expert ``[2I or I, H]`` matrices (gate rows, then up rows).
            down: Per-expert ``[H, I]`` matrices.
            gate_up_bias: ``[E, 2I or I]`` biases (``has_bias``), same row order.
            down_bias: ``[E, H]`` biases.
        """
        if self.kind == "modulelist":
            g, u, d = self.names
            out = {}
            for e, (first, second) in enumerate(zip(gate_up, down)):
                gate, up = first.chunk(2, dim=0)
                out[f"{prefix}{e}.{g}.weight"] = gate
                out[f"{prefix}{e}.{u}.weight"] = up
                out[f"{prefix}{e}.{d}.weight"] = second
            return out
        first, second = torch.stack(list(gate_up)), torch.stack(list(down))
        if self.has_gate and not self.concatenated:
            first = _interleave(first)
        if self.transposed:
            first, second = first.transpose(1, 2), second.transpose(1, 2)
        name = "gate_up_proj" if self.has_gate else "up_proj"
        out = {f"{prefix}{name}": first.contiguous(), f"{prefix}down_proj": second.contiguous()}
        if self.has_bias:
            if gate_up_bias is None or down_bias is None:
                raise ValueError(f"{prefix}: the layout has biases but none were given")
            out[f"{prefix}{name}_bias"] = _interleave(gate_up_bias) if self.has_gate and not self.concatenated \
                else gate_up_bias
            out[f"{prefix}down_proj_bias"] = down_bias
        return out

    @classmethod
    def of_fused(cls, experts: nn.Module, has_gate: bool, has_bias: bool) -> ExpertLayout:
        """The layout of a transformers-5 fused experts module."""
        return cls("fused", has_gate, transposed=bool(getattr(experts, "is_transposed", False)),
                   concatenated=bool(getattr(experts, "is_concatenated", True)), has_bias=has_bias)


def _interleave(rows: torch.Tensor) -> torch.Tensor:
    """``[E, 2I, ...]`` concatenated ``[g; u]`` rows back to interleaved ``[g0, u0, g1, u1, ...]``."""
    g, u = rows.chunk(2, dim=1)
    return torch.stack([g, u], dim=2).reshape(rows.shape)


class ConversionContext(Protocol):
    """What an adapter is handed to build the analog modules of one MoE block.

    The adapters only describe a family (where its router and experts are, how it routes); the
    analog layer implements this interface (:class:`romer_aihwkit.analog.build.AnalogConversionContext`)
    and passes it to :meth:`MoEAdapter.convert`, so adapters never import the analog modules.
    Hardware-aware training implements it too (:class:`romer_aihwkit.baselines.hwa.HWAConversionContext`,
    training tiles over the same adapters).
    """

    layer_index: int
    """Index of this MoE block among the model's MoE blocks."""
    block_name: str
    """Fully qualified module name of the block."""

    def matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
               analog: bool = True) -> nn.Module:
        """A weight matrix of ``role`` (analog, or digital with ``analog=False``) named ``block_name.name``."""
        ...

    def experts(self, gate_up: Any, down: Any, act_fn: Any, has_gate: bool = True, gate_up_bias: Any = None,
                down_bias: Any = None, layout: ExpertLayout | None = None) -> nn.Module:
        """The block's analog experts from per-expert ``gate_up`` and ``down`` matrices.

        ``layout`` says how the original model stored them (written back by ``save_pretrained``).
        """
        ...

    def router(self, weight: torch.Tensor, spec: RoutingSpec, correction_bias: torch.Tensor | None = None) -> nn.Module:
        """The block's analog router of routing ``spec``."""
        ...

    def block(self, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None,
              shared_expert_gate: nn.Module | None = None, returns_router_logits: bool = False) -> nn.Module:
        """A whole analog MoE block, for layouts whose own forward cannot be kept."""
        ...


def fused_expert_weights(experts: Any) -> tuple[torch.Tensor, torch.Tensor, list | None, list | None, bool]:
    """Per-expert ``gate_up [2I or I, H]`` and ``down [H, I]`` matrices of a transformers-5 experts module.

    Returns ``(gate_up [E, 2I or I, H], down [E, H, I], gate_up_bias, down_bias, has_gate)``; the two
    tensors are views of the module's parameters where the layout allows (no copy).
    """
    has_gate = bool(getattr(experts, "has_gate", hasattr(experts, "gate_up_proj")))
    if getattr(experts, "has_post_expert_norm", False):
        raise UnsupportedLayoutError(f"{type(experts).__name__}: post-expert norms are not supported yet")
    if has_gate and transformers_compat.has_custom_gate(experts):
        raise UnsupportedLayoutError(
            f"{type(experts).__name__} has a custom gating function; write an adapter that converts it"
        )
    transposed = bool(getattr(experts, "is_transposed", False))
    first = experts.gate_up_proj if has_gate else experts.up_proj
    down = experts.down_proj
    if transposed:
        first, down = first.transpose(1, 2), down.transpose(1, 2)
    if has_gate and not getattr(experts, "is_concatenated", True):
        # interleaved [g0, u0, g1, u1, ...] -> concatenated [g; u]
        first = torch.cat([first[:, 0::2], first[:, 1::2]], dim=1)
    bias_first = bias_down = None
    if getattr(experts, "has_bias", False):
        b1 = experts.gate_up_proj_bias if has_gate else experts.up_proj_bias
        if has_gate and not getattr(experts, "is_concatenated", True):
            b1 = torch.cat([b1[:, 0::2], b1[:, 1::2]], dim=1)
        bias_first, bias_down = list(b1.detach()), list(experts.down_proj_bias.detach())
    return first.detach(), down.detach(), bias_first, bias_down, has_gate


def convert_linears(module: nn.Module, ctx: ConversionContext, role: str, prefix: str, analog: bool = True) -> int:
    """Replace every ``nn.Linear`` below ``module`` with a matrix of ``role``; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, ctx.matrix(child.weight, child.bias, role, f"{prefix}.{name}", analog=analog))
            count += 1
        else:
            count += convert_linears(child, ctx, role, f"{prefix}.{name}", analog)
    return count


class MoEAdapter:
    """Describes one MoE family. Subclass, set the class attributes, implement :meth:`routing_spec`.

    The default :meth:`convert` handles transformers-5 blocks (router module with a ``weight``
    returning ``(logits, weights, indices)``, fused experts, optional shared experts) in place,
    keeping the block's own forward.
    """

    family: str = ""
    """Short unique name, e.g. ``"olmoe"``."""
    routing_doc: str = ""
    """One line on how the family routes."""
    router_attr: str = "gate"
    experts_attr: str = "experts"
    shared_expert_attrs: tuple[str, ...] = ()

    def block_types(self) -> tuple[type, ...]:
        """The MoE block classes this adapter converts (subclasses match too)."""
        return ()

    def matches(self, module: nn.Module) -> bool:
        types = self.block_types()
        return bool(types) and isinstance(module, types)

    def routing_spec(self, block: nn.Module) -> RoutingSpec:
        raise NotImplementedError

    def correction_bias(self, block: nn.Module) -> torch.Tensor | None:
        return getattr(getattr(block, self.router_attr), "e_score_correction_bias", None)

    def num_experts(self, block: nn.Module) -> int:
        return int(getattr(block, self.router_attr).weight.shape[0])

    def expert_weights(self, block: nn.Module) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor], bool]:
        """Per-expert digital ``(gate_up [2I or I, H], down [H, I])`` matrices and ``has_gate``."""
        gate_up, down, _, _, has_gate = fused_expert_weights(getattr(block, self.experts_attr))
        return gate_up, down, has_gate

    def convert(self, block: nn.Module, ctx: ConversionContext) -> nn.Module:
        router = getattr(block, self.router_attr)
        spec = self.routing_spec(block)
        gate_up, down, b1, b2, has_gate = fused_expert_weights(getattr(block, self.experts_attr))
        act_fn = getattr(block, self.experts_attr).act_fn
        setattr(block, self.router_attr, ctx.router(router.weight, spec, self.correction_bias(block)))
        layout = ExpertLayout.of_fused(getattr(block, self.experts_attr), has_gate, has_bias=b1 is not None)
        experts = ctx.experts(gate_up, down, act_fn, has_gate, b1, b2, layout=layout)
        setattr(block, self.experts_attr, experts)
        for attr in self.shared_expert_attrs:
            shared = getattr(block, attr, None)
            if shared is not None:
                convert_linears(shared, ctx, "shared_expert", attr)
        return block
