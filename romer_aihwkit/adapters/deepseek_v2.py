"""DeepSeek-V2 (``DeepseekV2Moe``): softmax, greedy or group-limited top-k, scaled weights, shared experts."""

from .base import MoEAdapter
from .routing import RoutingSpec


class DeepseekV2Adapter(MoEAdapter):
    family = "deepseek_v2"
    routing_doc = (
        "softmax; top-k greedy, or group-limited (best expert per group picks topk_group of n_group groups); "
        "weights x routed_scaling_factor, not renormalised; shared experts added"
    )
    shared_expert_attrs = ("shared_experts",)

    def block_types(self):
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

        return (DeepseekV2Moe,)

    def routing_spec(self, block):
        gate = block.gate
        grouped = gate.topk_method == "group_limited_greedy"
        return RoutingSpec(
            self.num_experts(block),
            gate.top_k,
            "softmax",
            norm_topk_prob=False,
            n_group=gate.num_group if grouped else 1,
            topk_group=gate.topk_group if grouped else 1,
            group_score="max",
            routed_scaling_factor=float(gate.routed_scaling_factor),
            fp32_logits=True,  # transformers computes this router in float32
        )
