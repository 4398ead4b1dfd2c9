"""Tiny randomly initialised MoE models of every supported family, built from HF configs (no download)."""

from __future__ import annotations

import copy

import torch
from torch import nn

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _olmoe():
    from transformers import OlmoeConfig, OlmoeForCausalLM
    return OlmoeForCausalLM(OlmoeConfig(**COMMON, intermediate_size=16, num_experts=8, num_experts_per_tok=2))


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16,
                                              shared_expert_intermediate_size=24, num_experts=8, num_experts_per_tok=2))


def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**COMMON, head_dim=8, intermediate_size=32, moe_intermediate_size=16,
                                              num_experts=8, num_experts_per_tok=2, norm_topk_prob=True))


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM
    return MixtralForCausalLM(MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2))


def _deepseek_v2():
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    return DeepseekV2ForCausalLM(DeepseekV2Config(
        **COMMON, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=0, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        routed_scaling_factor=1.0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4,
        v_head_dim=8))


def _deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    model = DeepseekV3ForCausalLM(DeepseekV3Config(
        **COMMON, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2, norm_topk_prob=True,
        routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
        v_head_dim=8))
    with torch.no_grad():  # a non-trivial correction bias and router, as in a trained checkpoint
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 0.3)
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


class LegacyExpert(nn.Module):
    """transformers-4 style expert MLP."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, names=("gate_proj", "up_proj", "down_proj")):
        super().__init__()
        i2, h = gate_up.shape
        self.names = names
        for n, w in zip(names, (gate_up[: i2 // 2], gate_up[i2 // 2 :], down)):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            setattr(self, n, lin)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        g, u, d = (getattr(self, n) for n in self.names)
        return d(self.act_fn(g(x)) * u(x))


def mix_experts(experts, x, idx, w):
    """Reference routed-expert mix, one token and slot at a time (how older remote code reads)."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            out[t] += w[t, j] * experts[int(idx[t, j])](x[t])
    return out


class LegacyMixtralBlock(nn.Module):
    """transformers-4 Mixtral layout: nn.Linear gate, w1/w3/w2 experts, returns (hidden, router_logits)."""

    def __init__(self, block):
        super().__init__()
        e, h = block.gate.weight.shape
        self.top_k = block.gate.top_k
        self.gate = nn.Linear(h, e, bias=False)
        self.gate.weight.data.copy_(block.gate.weight)
        self.experts = nn.ModuleList(
            LegacyExpert(block.experts.gate_up_proj[i], block.experts.down_proj[i], ("w1", "w3", "w2")) for i in range(e)
        )

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.view(-1, h)
        logits = self.gate(x)
        w = logits.softmax(-1, dtype=torch.float)
        w, idx = w.topk(self.top_k, dim=-1)
        w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
        out = mix_experts(self.experts, x, idx, w)
        return out.view(b, s, h), logits


class LegacyMixtralWrapper(nn.Module):
    """Adapts the tuple-returning legacy block to a transformers-5 decoder layer (which expects a tensor)."""

    def __init__(self, block):
        super().__init__()
        self.inner = block

    def forward(self, x):
        out = self.inner(x)
        return out[0] if isinstance(out, tuple) else out


class MoEGate(nn.Module):
    """DeepSeek-MoE remote-code style gate: a bare weight, its own top-k."""

    def __init__(self, weight, top_k):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.top_k = top_k
        self.norm_topk_prob = False
        self.scoring_func = "softmax"

    def forward(self, x):
        scores = nn.functional.linear(x, self.weight).softmax(-1)
        w, idx = scores.topk(self.top_k, dim=-1)
        return idx, w, None


class DeepseekMoERemote(nn.Module):
    """DeepSeek-MoE remote-code layout: MoEGate + ModuleList experts + shared_experts; returns a tensor."""

    def __init__(self, block):
        super().__init__()
        e, h = block.gate.weight.shape
        self.gate = MoEGate(block.gate.weight, block.gate.top_k)
        self.experts = nn.ModuleList(LegacyExpert(block.experts.gate_up_proj[i], block.experts.down_proj[i]) for i in range(e))
        self.shared_experts = copy.deepcopy(block.shared_expert)
        self.shared_expert_gate = copy.deepcopy(block.shared_expert_gate)

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.view(-1, h)
        idx, w, _ = self.gate(x)
        out = mix_experts(self.experts, x, idx, w)
        out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_experts(x)
        return out.view(b, s, h)


def _legacy_mixtral():
    model = _mixtral()
    for layer in model.model.layers:
        layer.mlp = LegacyMixtralWrapper(LegacyMixtralBlock(layer.mlp))
    return model


def _legacy_deepseek():
    model = _qwen2_moe()  # norm_topk_prob False, shared expert with sigmoid gate: same maths
    for layer in model.model.layers:
        layer.mlp = DeepseekMoERemote(layer.mlp)
    return model


FACTORIES = {
    "olmoe": _olmoe,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "legacy_mixtral": _legacy_mixtral,
    "legacy_deepseek": _legacy_deepseek,
}

SHARED = {"qwen2_moe": 3, "deepseek_v2": 3, "deepseek_v3": 3, "legacy_deepseek": 3}
MOE_LAYERS = {"deepseek_v3": 1}


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return FACTORIES[family]().eval()
