"""DeepSeek-V3 (``DeepseekV3MoE``): sigmoid scores, correction bias for selection, group-limited top-k."""

from .base import MoEAdapter
from .routing import RoutingSpec


class DeepseekV3Adapter(MoEAdapter):
    family = "deepseek_v3"
    routing_doc = (
        "sigmoid scores; selection on scores + e_score_correction_bias within topk_group of n_group groups "
        "(group score = sum of its two best); weights = sigmoid scores, renormalised if norm_topk_prob, "
        "x routed_scaling_factor; shared experts added"
    )
    shared_expert_attrs = ("shared_experts",)

    def block_types(self):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        return (DeepseekV3MoE,)

    def routing_spec(self, block):
        gate = block.gate
        return RoutingSpec(
            self.num_experts(block),
            gate.top_k,
            "sigmoid",
            norm_topk_prob=bool(gate.norm_topk_prob),
            n_group=int(gate.num_group),
            topk_group=int(gate.topk_group),
            group_score="top2_sum",
            routed_scaling_factor=float(gate.routed_scaling_factor),
            uses_correction_bias=True,
            fp32_logits=True,  # transformers computes this router in float32
        )
