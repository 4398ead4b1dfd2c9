"""Conversion of every supported MoE family onto AIHWKit tiles."""

import pytest
import torch
from tiny_models import FACTORIES, MOE_LAYERS, SHARED, tiny_model
from torch import nn

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogExperts, NoMoEBlocksError, UnsupportedMoEError, find_routers, trace_routing

FAMILIES = sorted(FACTORIES)


def logits(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw).logits


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ideal_reproduces_digital_logits(family, engine, tokens):
    model = tiny_model(family)
    ref = logits(model, tokens)
    ra.convert_to_analog_moe(model, "ideal", engine=engine)
    assert model.analog_state.engine == engine
    model.program_analog_weights(seed=0)
    model.drift_analog_weights(3600.0)
    out = logits(model, tokens)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_summary_counts_routers_and_every_expert_matrix(family):
    model = tiny_model(family)
    ra.convert_to_analog_moe(model, "ideal")
    layers = MOE_LAYERS.get(family, 2)
    summary = ra.analog_summary(model)
    assert summary["router"] == layers
    assert summary["expert"] == layers * 8 * 2  # gate_up and down per expert
    assert summary["shared_expert"] == SHARED.get(family, 0) * layers
    assert summary["attention"] == 0 and summary["digital"] > 0


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "deepseek_v3", "legacy_mixtral"])
def test_pcm_chip_instance_perturbs_logits_router_and_each_expert(family, engine, tokens):
    model = tiny_model(family)
    ref = logits(model, tokens)
    ra.convert_to_analog_moe(model, "pcm", engine=engine)
    model.program_analog_weights(seed=1)
    model.drift_analog_weights(3600.0)
    assert not torch.allclose(logits(model, tokens), ref, atol=1e-3)

    events = []
    with trace_routing(model, events.append):
        logits(model, tokens)
    assert len(events) == MOE_LAYERS.get(family, 2)
    for ev in events:
        assert ev.noisy_logits.shape == ev.reference_logits.shape
        assert not torch.allclose(ev.noisy_logits, ev.reference_logits, atol=1e-4)

    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    x = torch.randn(5, experts.own_weights(0)[0].shape[1])
    for e in range(experts.num_experts):
        w_gu, w_d = experts.own_weights(e)
        g, u = nn.functional.linear(x, w_gu).chunk(2, dim=-1)
        digital = nn.functional.linear(nn.functional.silu(g) * u, w_d)
        with torch.no_grad():
            assert not torch.allclose(experts.expert_forward(e, x), digital, atol=1e-4)


def test_chip_instances_are_reproducible_from_seed(tokens):
    outs = []
    for seed in (3, 3, 4):
        model = tiny_model("olmoe")
        ra.convert_to_analog_moe(model, "gaussian-5")
        model.program_analog_weights(seed=seed)
        outs.append(logits(model, tokens))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_aihwkit_convert_to_analog_leaves_fused_experts_and_router_digital():
    from aihwkit.nn.conversion import convert_to_analog

    model = tiny_model("olmoe")
    cfg = ra.load_device_config("pcm")
    converted = convert_to_analog(model, cfg.rpu_config())
    block = converted.model.layers[0].mlp
    assert isinstance(block.experts.gate_up_proj, nn.Parameter)  # still a digital 3D parameter
    assert type(block.gate).__name__ == "OlmoeTopKRouter"

    ours = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    assert ra.analog_summary(ours)["expert"] == 2 * 8 * 2 and ra.analog_summary(ours)["router"] == 2


def test_generate_and_output_router_logits(tokens):
    model = tiny_model("qwen2_moe")
    ra.convert_to_analog_moe(model, "pcm")
    model.program_analog_weights(seed=0)
    model.drift_analog_weights()
    out = model(tokens, output_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (tokens.numel(), 8)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    gen = model.generate(tokens[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 9)


def test_save_pretrained_writes_loadable_digital_weights(tmp_path, tokens):
    model = tiny_model("deepseek_v3")
    ref = logits(model, tokens)
    ra.convert_to_analog_moe(model, "pcm")
    model.program_analog_weights(seed=0)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert torch.allclose(logits(reloaded, tokens), ref, atol=1e-5)


def test_analog_state_round_trips_exactly(tmp_path, tokens):
    from romer_aihwkit.analog import load_analog_state, save_analog_state

    model = tiny_model("olmoe")
    ra.convert_to_analog_moe(model, "pcm")
    model.program_analog_weights(seed=7)
    model.drift_analog_weights(86400.0)
    save_analog_state(model, tmp_path / "chip.safetensors")
    torch.manual_seed(0)
    expected = logits(model, tokens)

    other = tiny_model("olmoe")
    ra.convert_to_analog_moe(other, "pcm")
    other.program_analog_weights(seed=99)
    other.drift_analog_weights(86400.0)
    load_analog_state(other, tmp_path / "chip.safetensors")
    torch.manual_seed(0)
    assert torch.equal(logits(other, tokens), expected)
    assert other.analog_state.seed == 7


def test_digital_experts_and_digital_router():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm", analog_router=False, digital_experts=[(0, 1), (1, 5)])
    summary = ra.analog_summary(model)
    assert summary["router"] == 0
    assert summary["expert"] == 2 * 8 * 2 - 4
    with pytest.raises(ValueError, match="out of range"):
        ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm", digital_experts=[(0, 8)])


def test_analog_attention():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "ideal", analog_attention=True)
    assert ra.analog_summary(model)["attention"] == 2 * 4


def test_model_without_moe_names_its_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(NoMoEBlocksError, match="LlamaForCausalLM"):
        ra.convert_to_analog_moe(model, "ideal")


def test_unknown_moe_family_lists_supported_and_how_to_register():
    class WeirdMoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.Linear(4, 4)
            self.router = nn.Linear(4, 2)

    model = nn.Sequential(WeirdMoE())
    with pytest.raises(UnsupportedMoEError, match="register_adapter") as err:
        ra.convert_to_analog_moe(model, "ideal")
    assert "olmoe" in str(err.value) and "deepseek_v3" in str(err.value)


def test_drift_before_programming_is_a_clear_error():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    with pytest.raises(RuntimeError, match="program_analog_weights"):
        model.drift_analog_weights(3600.0)


def test_routers_are_in_layer_order():
    model = ra.convert_to_analog_moe(tiny_model("mixtral"), "ideal")
    assert [r.layer_index for r in find_routers(model)] == [0, 1]


def test_bf16_model_converts_and_ideal_matches(tokens):
    model = tiny_model("qwen2_moe").to(torch.bfloat16)
    ref = logits(model, tokens).float()
    ra.convert_to_analog_moe(model, "ideal")
    model.program_analog_weights(seed=0)
    out = logits(model, tokens)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.05)


def test_device_map_loaded_model_converts(tmp_path, tokens):
    from transformers import AutoModelForCausalLM

    tiny_model("olmoe").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto").eval()
    ref = logits(model, tokens)
    ra.convert_to_analog_moe(model, "ideal")
    model.program_analog_weights(seed=0)
    assert torch.allclose(logits(model, tokens), ref, atol=1e-4)
