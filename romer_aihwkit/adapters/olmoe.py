"""OLMoE (``OlmoeSparseMoeBlock``): softmax over all experts, top-k, optional renormalisation."""

from .base import MoEAdapter
from .routing import RoutingSpec


class OlmoeAdapter(MoEAdapter):
    family = "olmoe"
    routing_doc = "softmax over E experts, top-k of the probabilities, renormalised if norm_topk_prob; no shared expert"

    def block_types(self):
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

        return (OlmoeSparseMoeBlock,)

    def routing_spec(self, block):
        gate = block.gate
        return RoutingSpec(self.num_experts(block), gate.top_k, "softmax", bool(gate.norm_topk_prob))
