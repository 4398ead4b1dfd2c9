"""The older MoE layout: experts as an ``nn.ModuleList`` of MLPs and a router with a ``weight``.

Covers transformers-4 Mixtral / Qwen2-MoE blocks (``w1/w3/w2`` or ``gate_proj/up_proj/down_proj``
experts, ``nn.Linear`` router) and DeepSeek-MoE's remote code (``MoEGate`` with a ``weight``,
``shared_experts``). Such blocks route inside their own forward, so the whole block is replaced by
an :class:`~romer_aihwkit.analog.block.AnalogMoEBlock` that routes through the analog router.

Routing: ``softmax`` (or the gate's ``scoring_func``), top-k from the block or gate
(``top_k``/``num_experts_per_tok``), renormalised when ``norm_topk_prob`` is set (Mixtral, which
has no such flag, always renormalises). DeepSeek-V2/V3 remote-code gates (``MoEGate`` with
``topk_method``) are mapped exactly as their code routes: ``greedy``, ``group_limited_greedy``
(group score = its best expert) or ``noaux_tc`` (sigmoid scores, ``e_score_correction_bias`` for
selection, group score = sum of its two best), ``routed_scaling_factor`` applied as the code
applies it (V2: only when the weights are not renormalised; V3: always), with the gate's logits
computed in float32 as that code computes them, whatever the model's dtype. Anything else that
changes routing is refused with :class:`UnsupportedLayoutError` rather than converted wrongly.
Whether the block returns ``(hidden, router_logits)`` is probed once on a zero input at
conversion time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ConversionContext, ExpertLayout, MoEAdapter, UnsupportedLayoutError, convert_linears
from .routing import RoutingSpec

_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def _expert_names(expert: nn.Module) -> tuple[str, str, str] | None:
    for names in _NAMES:
        if all(isinstance(getattr(expert, n, None), nn.Linear) for n in names):
            return names
    return None


def _names(expert: nn.Module) -> tuple[str, str, str]:
    names = _expert_names(expert)
    if names is None:
        raise UnsupportedLayoutError(f"{type(expert).__name__}: no gate/up/down projections")
    return names


def _first_attr(objs, names, default=None):
    for obj in objs:
        for name in names:
            value = getattr(obj, name, None)
            if value is not None:
                return value
    return default


class LegacyModuleListAdapter(MoEAdapter):
    family = "legacy_modulelist"
    routing_doc = (
        "softmax (or the gate's scoring_func) top-k; renormalised per norm_topk_prob (default on); "
        "shared experts (+ sigmoid shared gate) added; whole block replaced"
    )

    def matches(self, module: nn.Module) -> bool:
        experts = getattr(module, "experts", None)
        gate = getattr(module, "gate", None)
        if not isinstance(experts, nn.ModuleList) or len(experts) == 0 or gate is None:
            return False
        weight = getattr(gate, "weight", None)
        return (
            isinstance(weight, torch.Tensor)
            and weight.dim() == 2
            and weight.shape[0] == len(experts)
            and all(_expert_names(e) is not None for e in experts)
        )

    def routing_spec(self, block: Any) -> RoutingSpec:
        gate = block.gate
        top_k = _first_attr((block, gate), ("top_k", "num_experts_per_tok"))
        if top_k is None:
            top_k = getattr(getattr(block, "config", None), "num_experts_per_tok", None)
        if top_k is None:
            raise UnsupportedLayoutError(f"{type(block).__name__}: cannot find top_k on the block or its gate")
        norm = bool(_first_attr((block, gate), ("norm_topk_prob",), default=True))
        scoring: Any = getattr(gate, "scoring_func", "softmax")
        if scoring not in ("softmax", "sigmoid"):
            raise UnsupportedLayoutError(f"{type(block).__name__}: scoring_func {scoring!r} is not supported")
        top_k = int(top_k)
        method = getattr(gate, "topk_method", None)
        scaling = float(_first_attr((gate, block), ("routed_scaling_factor",), default=1.0))
        bias = getattr(gate, "e_score_correction_bias", None)
        name = type(gate).__name__
        if method is None:
            if bias is not None or scaling != 1.0:
                raise UnsupportedLayoutError(
                    f"{name} has e_score_correction_bias or routed_scaling_factor but no topk_method: how it routes "
                    "is unknown, so it is not converted")
            return RoutingSpec(len(block.experts), top_k, scoring, norm)
        if method not in ("greedy", "group_limited_greedy", "noaux_tc"):
            raise UnsupportedLayoutError(f"{name}: topk_method {method!r} is not supported "
                                         "(greedy, group_limited_greedy, noaux_tc are)")
        norm = norm and top_k > 1  # DeepSeek renormalises only for top_k > 1
        grouped = method != "greedy"
        if method == "noaux_tc":
            if scoring != "sigmoid" or bias is None:
                raise UnsupportedLayoutError(f"{name}: topk_method 'noaux_tc' needs sigmoid scores and an "
                                             "e_score_correction_bias")
        elif bias is not None:
            raise UnsupportedLayoutError(f"{name}: e_score_correction_bias with topk_method {method!r} is not supported")
        n_group = int(getattr(gate, "n_group", 1) or 1) if grouped else 1
        topk_group = int(getattr(gate, "topk_group", 1) or 1) if grouped else 1
        return RoutingSpec(
            len(block.experts), top_k, scoring, norm,
            n_group=n_group, topk_group=topk_group,
            group_score="top2_sum" if method == "noaux_tc" else "max",
            # V3 (noaux_tc) always scales; V2 scales only weights it does not renormalise
            routed_scaling_factor=scaling if method == "noaux_tc" or not norm else 1.0,
            uses_correction_bias=method == "noaux_tc",
            fp32_logits=True,  # the remote code computes the gate in float32 (hidden and weight cast up)
        )

    def num_experts(self, block: Any) -> int:
        return len(block.experts)

    def expert_weights(self, block: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
        names = _names(block.experts[0])
        gate_up = [torch.cat([getattr(e, names[0]).weight, getattr(e, names[1]).weight]).detach() for e in block.experts]
        down = [getattr(e, names[2]).weight.detach() for e in block.experts]
        return gate_up, down, True

    def convert(self, block: Any, ctx: ConversionContext) -> nn.Module:
        spec = self.routing_spec(block)
        names = _names(block.experts[0])
        gate_up, down, _ = self.expert_weights(block)
        act_fn = _first_attr((block.experts[0],), ("act_fn", "act"))
        if act_fn is None:
            raise UnsupportedLayoutError(f"{type(block.experts[0]).__name__}: no act_fn/act attribute")
        hidden = block.gate.weight.shape[1]
        with torch.no_grad():
            probe = block(torch.zeros(1, 1, hidden, dtype=block.gate.weight.dtype, device=block.gate.weight.device))
        shared = _first_attr((block,), ("shared_experts", "shared_expert"))
        if shared is not None:
            convert_linears(shared, ctx, "shared_expert", "shared_experts")
        experts = ctx.experts(gate_up, down, act_fn, layout=ExpertLayout("modulelist", names=names))
        return ctx.block(
            router=ctx.router(block.gate.weight, spec, getattr(block.gate, "e_score_correction_bias", None)),
            experts=experts,
            shared_experts=shared,
            shared_expert_gate=getattr(block, "shared_expert_gate", None),
            returns_router_logits=isinstance(probe, tuple),
        )
