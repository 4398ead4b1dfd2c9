"""Qwen2-MoE (``Qwen2MoeSparseMoeBlock``): softmax top-k plus a shared expert behind a sigmoid gate.

The shared expert's matrices go on analog tiles (role ``shared_expert``); its one-column
``shared_expert_gate`` stays digital.
"""

from .base import MoEAdapter
from .routing import RoutingSpec


class Qwen2MoeAdapter(MoEAdapter):
    family = "qwen2_moe"
    routing_doc = "softmax top-k (renormalised if norm_topk_prob) + one shared expert scaled by sigmoid(shared_expert_gate(h))"
    shared_expert_attrs = ("shared_expert",)

    def block_types(self):
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

        return (Qwen2MoeSparseMoeBlock,)

    def routing_spec(self, block):
        gate = block.gate
        return RoutingSpec(self.num_experts(block), gate.top_k, "softmax", bool(gate.norm_topk_prob))
