"""Stress controls: function-preserving for every family, spec parsing, and what they change."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FACTORIES, tiny_model

from romer_aihwkit.errors import InputError
from romer_aihwkit.stress import StressPart, apply_stress, norm_consumers, parse_stress_spec, stress_label


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", sorted(FACTORIES))
@pytest.mark.parametrize("spec", ["outliers:3x50", "heavy-weights:2x20@all"])
def test_stress_keeps_digital_logits(family, spec):
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = tiny_model(family)
    model = tiny_model(family)
    report = apply_stress(model, spec)
    assert report["spec"] == spec
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), rtol=1e-4, atol=1e-4)
    # the weights really changed: the stressed gains differ from the reference's
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(reference.named_parameters())[n])]
    assert any("post_attention_layernorm" in n for n in changed)
    assert any(("gate" in n or "router" in n) for n in changed)


def test_readers_per_norm_are_exact_for_deepseek_v3():
    model = tiny_model("deepseek_v3")
    found = {c["norm"]: sorted(name for name, _, _ in c["readers"]) for c in norm_consumers(model, "all")}
    # layer 0 is dense (first_k_dense_replace=1): only @all stresses it
    assert found["model.layers.0.post_attention_layernorm"] == ["model.layers.0.mlp.gate_proj.weight",
                                                                "model.layers.0.mlp.up_proj.weight"]
    assert found["model.layers.0.input_layernorm"] == ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                                                       "model.layers.0.self_attn.q_a_proj.weight"]
    moe = found["model.layers.1.post_attention_layernorm"]
    assert moe == ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.gate.weight",
                   "model.layers.1.mlp.shared_experts.gate_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"]
    assert set(c["norm"] for c in norm_consumers(model, "moe")) == {"model.layers.1.post_attention_layernorm"}


def test_qwen2_shared_expert_gate_is_a_reader():
    names = [n for c in norm_consumers(tiny_model("qwen2_moe")) for n, _, _ in c["readers"]]
    assert "model.layers.0.mlp.shared_expert_gate.weight" in names
    assert not any("down_proj" in n for n in names)


def test_outliers_put_outlier_channels_into_router_inputs():
    model = tiny_model("olmoe")
    report = apply_stress(model, "outliers:3x50")
    channels = report["parts"][0]["channel_ids"]
    seen = {}
    block = model.model.layers[0].mlp
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0].detach()))
    _logits(model, torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(1)))
    handle.remove()
    rms = seen["h"].reshape(-1, 32).pow(2).mean(0).sqrt()
    others = [c for c in range(32) if c not in channels]
    assert float(rms[channels].min()) > 10 * float(rms[others].median())


def test_heavy_weights_raise_router_row_crest_factor():
    plain, model = tiny_model("olmoe"), tiny_model("olmoe")
    apply_stress(model, "heavy-weights:2x20")

    def crest(m):
        w = m.model.layers[0].mlp.gate.weight.detach()
        return float((w.abs().amax(1) / w.pow(2).mean(1).sqrt()).mean())

    assert crest(model) > 2 * crest(plain)


def test_outliers_raise_analog_router_error():
    from romer_aihwkit.analog import convert_to_analog_moe, trace_routing

    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(2))

    def router_error(spec):
        model = tiny_model("olmoe")
        apply_stress(model, spec)
        convert_to_analog_moe(model, "pcm")
        model.program_analog_weights(seed=0, t_inference=3600.0)
        errs = []

        def obs(event):
            ref = event.reference_logits
            errs.append(float((event.noisy_logits - ref).norm() / ref.norm()))

        with trace_routing(model, obs):
            _logits(model, ids)
        return sum(errs) / len(errs)

    assert router_error("outliers:3x50") > 2 * router_error("none")


@pytest.mark.parametrize(("spec", "expected"), [
    ("outliers:3x50", [StressPart("outliers", 3, 50.0, "moe")]),
    (" Outliers:1x2.5@all + heavy-weights:4x1e2 ", [StressPart("outliers", 1, 2.5, "all"),
                                                    StressPart("heavy-weights", 4, 100.0, "moe")]),
    ("none", []), ("", []), (None, []),
])
def test_parse(spec, expected):
    assert parse_stress_spec(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("outliers", "expected KIND:NxS"),
    ("spikes:3x50", "unknown kind 'spikes'"),
    ("outliers:3x1", "scale must be in"),
    ("outliers:3x1e9", "scale must be in"),
    ("outliers:0x5", "at least 1"),
    ("outliers:3x50@attn", "unknown scope @attn"),
])
def test_parse_errors(spec, message):
    with pytest.raises(InputError, match=message):
        parse_stress_spec(spec)


def test_label_and_refusals():
    assert stress_label(None) == "none"
    assert stress_label("heavy-weights:2x10@moe") == "heavy-weights:2x10"
    model = tiny_model("olmoe")
    with pytest.raises(InputError, match="hidden size is 32"):
        apply_stress(model, "outliers:40x5")
    apply_stress(model, "outliers:3x50")
    with pytest.raises(InputError, match="already stressed"):
        apply_stress(model, "outliers:3x50")
    from romer_aihwkit.analog import convert_to_analog_moe

    with pytest.raises(InputError, match="before convert_to_analog_moe"):
        apply_stress(convert_to_analog_moe(tiny_model("olmoe"), "ideal"), "outliers:3x50")


def test_compare_records_stress_everywhere(tmp_path):
    import json

    from test_runner import make_tiny_model_folder
    from typer.testing import CliRunner

    from romer_aihwkit.cli import app

    tiny = make_tiny_model_folder(tmp_path / "tiny")
    out = tmp_path / "cmp"
    runner = CliRunner()
    args = ["compare", "--model", tiny, "--devices", "pcm", "--methods", "none,romer", "--seeds", "1",
            "--seq-len", "32", "--eval-blocks", "2", "--calib-blocks", "2", "--out", str(out)]
    result = runner.invoke(app, [*args, "--stress", "outliers:3x50"], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["stress"] == "outliers:3x50"
    assert {r["stress"] for r in results["rows"]} == {"outliers:3x50"}
    assert "stress outliers:3x50" in (out / "report.md").read_text()
    assert "stress outliers:3x50" in " ".join(result.stdout.split())  # the title may wrap
    # the digital model is unchanged by the stress: same digital perplexity as without it
    plain = runner.invoke(app, [*args[:-1], str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    plain_results = json.loads((tmp_path / "plain" / "results.json").read_text())
    key = next(iter(results["settings"]["digital_ppl"]))
    assert results["settings"]["digital_ppl"][key] == pytest.approx(plain_results["settings"]["digital_ppl"][key],
                                                                    rel=1e-4)
    assert plain_results["settings"].get("stress") is None
    bad = runner.invoke(app, [*args, "--stress", "outliers:3"])
    assert bad.exit_code == 2 and "expected KIND:NxS" in bad.stderr
