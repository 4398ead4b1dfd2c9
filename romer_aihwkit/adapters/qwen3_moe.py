"""Qwen3-MoE (``Qwen3MoeSparseMoeBlock``): softmax top-k, renormalised if norm_topk_prob, no shared expert."""

from .base import MoEAdapter
from .routing import RoutingSpec


class Qwen3MoeAdapter(MoEAdapter):
    family = "qwen3_moe"
    routing_doc = "softmax top-k, renormalised if norm_topk_prob; no shared expert"

    def block_types(self):
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

        return (Qwen3MoeSparseMoeBlock,)

    def routing_spec(self, block):
        gate = block.gate
        return RoutingSpec(self.num_experts(block), gate.top_k, "softmax", bool(gate.norm_topk_prob))
