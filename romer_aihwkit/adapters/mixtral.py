"""Mixtral (``MixtralSparseMoeBlock``): softmax top-k, always renormalised, no shared expert."""

from .base import MoEAdapter
from .routing import RoutingSpec


class MixtralAdapter(MoEAdapter):
    family = "mixtral"
    routing_doc = "softmax top-k, weights always renormalised; no shared expert"

    def block_types(self):
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        return (MixtralSparseMoeBlock,)

    def routing_spec(self, block):
        return RoutingSpec(self.num_experts(block), block.gate.top_k, "softmax", norm_topk_prob=True)
