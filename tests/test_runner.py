"""The Monte-Carlo comparison runner: statistics, metric definitions, rows, resume, refusal."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from routing_fakes import FakeEvent, FakeRouter

from romer_aihwkit.evaluation import (
    ComparisonResults,
    RoutingAccumulator,
    layer_metrics,
    load_rows,
    mean_std_ci,
    summarize_rows,
    with_recovery,
)
from romer_aihwkit.experiments import CompareSettings, ResultsExistError, resolve, run_comparison
from romer_aihwkit.experiments.runner import LOCK_FILE
from romer_aihwkit.outputs import MARKER_FILE

ROW_FIELDS = {"model", "device", "method", "t_inference", "seed", "ppl", "load_cv", "max_load_ratio",
              "router_fidelity"}
METHODS = ["global", "none", "romer"]
SMALL = dict(devices=["pcm"], seq_len=32, eval_blocks=2, calib_blocks=2, batch_size=4)


def make_tiny_model_folder(path):
    """A randomly initialised 2-layer OLMoE (8 experts, top-2) with the bundled tokenizer, saved to ``path``."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    from romer_aihwkit.models import bundled_tokenizer

    tok = bundled_tokenizer()
    torch.manual_seed(0)
    model = OlmoeForCausalLM(OlmoeConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-olmoe"))


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One finished comparison: 2 methods x 2 seeds."""
    out = tmp_path_factory.mktemp("finished")
    settings = CompareSettings(models=[tiny], methods=METHODS, seeds=[0, 1], **SMALL)
    results = run_comparison(settings, out)
    assert isinstance(results, ComparisonResults) and results.out_dir == out
    results = results.to_dict()  # results.json's content
    return settings, out, results


class CallCounter:
    def __init__(self, monkeypatch):
        import romer_aihwkit.experiments.methods as methods

        self.calls = []
        self.controls = []  # runs on the noise-free control device
        original = methods.apply_method

        def counting(model, method, seed, *args, **kwargs):
            from romer_aihwkit.analog.convert import analog_state

            control = analog_state(model).device_config.name == "ideal"
            (self.controls if control else self.calls).append((getattr(method, "name", method), seed))
            return original(model, method, seed, *args, **kwargs)

        monkeypatch.setattr(methods, "apply_method", counting)


# --------------------------------------------------------------------------- statistics
def test_mean_std_ci_hand_computed():
    stats = mean_std_ci([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(math.sqrt(5 / 3), rel=1e-12)  # 1.2910
    # t(0.975, df=3) = 3.182446305; half-width = t * std / sqrt(4)
    assert stats["ci95"] == pytest.approx(3.182446305284263 * 1.2909944487358056 / 2, rel=1e-9)
    assert stats["ci95"] == pytest.approx(2.0543, abs=1e-4)


def test_mean_std_ci_edge_cases():
    assert mean_std_ci([])["n"] == 0 and math.isnan(mean_std_ci([])["mean"])
    one = mean_std_ci([7.0])
    assert one["mean"] == 7.0 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    same = mean_std_ci([3.0, 3.0, 3.0])
    assert same["std"] == 0.0 and same["ci95"] == 0.0
    # two values: t(0.975, 1) = 12.7062
    assert mean_std_ci([0.0, 2.0])["ci95"] == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2), rel=1e-8)


def test_summarize_rows_groups_by_model_device_method_time():
    def row(method, t, seed, ppl):
        return {"model": "m", "device": "pcm", "method": method, "t_inference": t, "seed": seed, "ppl": ppl,
                "load_cv": 0.1 * seed, "max_load_ratio": 1.0 + seed, "router_fidelity": 1.0,
                "load_entropy": float("nan")}

    rows = [row("none", 3600.0, 0, 10.0), row("none", 3600.0, 1, 12.0), row("romer", 3600.0, 0, 8.0),
            row("none", 86400.0, 0, 20.0), row("romer", 3600.0, 1, 9.0), row("none", 3600.0, 2, 14.0)]
    summary = summarize_rows(rows)
    keys = [(s["method"], s["t_inference"]) for s in summary]
    assert keys == [("none", 3600.0), ("romer", 3600.0), ("none", 86400.0)]  # first-seen order
    none = summary[0]
    assert none["seeds"] == [0, 1, 2] and none["n"] == 3
    assert none["ppl"] == pytest.approx(12.0) and none["ppl_std"] == pytest.approx(2.0)
    assert none["ppl_ci95"] == pytest.approx(mean_std_ci([10, 12, 14])["ci95"])
    assert none["max_load_ratio"] == pytest.approx(2.0)
    assert math.isnan(none["load_entropy"])  # NaNs are skipped, none left
    assert summary[2]["n"] == 1 and math.isnan(summary[2]["ppl_ci95"])


# --------------------------------------------------------------------------- metric definitions
def test_layer_metrics_balanced_and_collapsed():
    balanced = layer_metrics(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    assert balanced["load_cv"] == pytest.approx(0.0)
    assert balanced["max_load_ratio"] == pytest.approx(1.0)
    assert balanced["load_entropy"] == pytest.approx(1.0)
    collapsed = layer_metrics(torch.tensor([4.0, 0.0, 0.0, 0.0]))
    assert collapsed["max_load_ratio"] == pytest.approx(4.0)
    assert collapsed["load_cv"] == pytest.approx(math.sqrt(3.0))  # loads [1,0,0,0]: std 0.433 / mean 0.25
    assert collapsed["load_entropy"] == pytest.approx(0.0)
    skewed = layer_metrics(torch.tensor([3.0, 1.0, 0.0, 0.0]))
    assert skewed["max_load_ratio"] == pytest.approx(3.0)  # 0.75 * 4
    assert math.isnan(layer_metrics(torch.zeros(4))["load_cv"])


def test_routing_accumulator_fidelity_and_loads():
    r0, r1 = FakeRouter("layer0", 4), FakeRouter("layer1", 4)
    acc = RoutingAccumulator([r0, r1])
    sel = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])
    acc(FakeEvent(r0, sel, sel.clone()))  # identical selections: fidelity 1
    acc(FakeEvent(r1, torch.tensor([[0, 1], [0, 1]]), torch.tensor([[2, 3], [3, 2]])))  # disjoint: 0
    out = acc.result()
    l0, l1 = out.layers
    assert l0.router_fidelity == pytest.approx(1.0) and l1.router_fidelity == pytest.approx(0.0)
    assert l0.load == pytest.approx([0.25] * 4) and l0.load_cv == pytest.approx(0.0)
    assert l0.max_load_ratio == pytest.approx(1.0)
    assert l1.load == pytest.approx([0.5, 0.5, 0.0, 0.0]) and l1.max_load_ratio == pytest.approx(2.0)
    assert l1.reference_load == pytest.approx([0.0, 0.0, 0.5, 0.5])
    assert out.router_fidelity == pytest.approx(0.5)  # mean over layers
    assert out.max_load_ratio == pytest.approx(1.5)
    # half overlap: one of two experts shared per token
    acc2 = RoutingAccumulator([r0])
    acc2(FakeEvent(r0, torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 2], [3, 0]])))
    assert acc2.result().router_fidelity == pytest.approx(0.5)


# --------------------------------------------------------------------------- run_comparison
def test_comparison_writes_every_method_and_seed(finished, tiny):
    settings, out, results = finished
    assert set(results) == {"settings", "rows", "summary"}
    rows = results["rows"]
    keys = {(r["method"], r["seed"]) for r in rows}
    assert keys == {(m, s) for m in METHODS for s in [0, 1]} and len(rows) == 6
    for row in rows:
        assert ROW_FIELDS <= set(row)
        assert row["model"] == tiny and row["device"] == "pcm" and row["t_inference"] == 3600.0
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1
        assert 0.0 <= row["router_fidelity"] <= 1.0 and row["max_load_ratio"] >= 1.0
        assert "layers" not in row  # per-layer loads stay in rows.jsonl
    assert len(results["summary"]) == 3 and all(s["n"] == 2 for s in results["summary"])
    assert results["settings"]["digital_ppl"][tiny] > 1
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows))
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("model,device,method,t_inference,seed,ppl") and len(csv) == 7
    assert csv[0].split(",")[13:16] == ["edit_ppl", "recovered", "max_masked_share"]
    jsonl = load_rows(out)
    assert len(jsonl) == 6
    assert all(len(r.layers) == 2 and len(r.layers[0]["load"]) == 8 for r in jsonl)
    # rows.jsonl holds what was measured; results.json adds `recovered`, derived from the global row of each chip
    assert all(r.recovered is None for r in jsonl)
    assert [r.to_dict(layers=False) for r in with_recovery(sorted(jsonl, key=lambda r: r.key))] == on_disk["rows"]
    # noise-free controls: settings of the chip alone have no edit; the model-editing method has a measured one
    by = {(r["method"], r["seed"]): r for r in rows}
    assert by[("none", 0)]["edit_ppl"] == 0.0 and by[("global", 1)]["edit_ppl"] == 0.0
    assert by[("global", 0)]["recovered"] == 0.0
    for seed in (0, 1):
        romer, glob = by[("romer", seed)], by[("global", seed)]
        digital = romer["digital_ppl"]
        # measured (the random tiny model's routing masks nothing on a noise-free chip: the digital model again)
        assert romer["edit_ppl"] == pytest.approx(0.0, abs=1e-3 * digital) and len(romer["masked_share"]) == 2
        assert romer["recovered"] == pytest.approx(
            ((glob["ppl"] - romer["ppl"]) + romer["edit_ppl"]) / (glob["ppl"] - digital))
    # on a noise-free chip the calibration is the same for every seed: one edit
    assert by[("romer", 0)]["edit_ppl"] == pytest.approx(by[("romer", 1)]["edit_ppl"], rel=1e-6)
    assert results["settings"]["controls"] is True
    assert sorted(p.name for p in out.glob(".*")) == sorted([LOCK_FILE, MARKER_FILE])  # no temporary files left, only lock and marker


def test_resume_extends_seeds_without_recomputing(finished, tmp_path, monkeypatch):
    settings, out, _ = finished
    work = tmp_path / "resume"
    shutil.copytree(out, work)
    # state after `seeds=[0]`: only the seed-0 rows (seeds are not part of the fingerprint)
    seed0 = [line for line in (work / "rows.jsonl").read_text().splitlines() if json.loads(line)["seed"] == 0]
    (work / "rows.jsonl").write_text("\n".join(seed0) + "\n")
    before = {(r.method, r.seed): r.seconds for r in load_rows(work)}
    assert sorted(before) == [("global", 0), ("none", 0), ("romer", 0)]
    counter = CallCounter(monkeypatch)
    computed = []
    results = run_comparison(settings, work, on_row=computed.append).to_dict()  # seeds [0, 1]
    assert sorted(counter.calls) == [("global", 1), ("none", 1), ("romer", 1)]
    assert counter.controls == [("romer", 1)]  # the noise-free control of the one model-editing method
    assert sorted((r.method, r.seed) for r in computed) == [("global", 1), ("none", 1), ("romer", 1)]
    assert len(results["rows"]) == 6
    after = {(r["method"], r["seed"]): r["seconds"] for r in results["rows"]}
    assert all(after[k] == v for k, v in before.items())  # seed-0 rows kept as they were
    assert all(s["n"] == 2 for s in results["summary"])


def test_killed_run_resumes_from_torn_line(finished, tmp_path, monkeypatch):
    settings, out, _ = finished
    work = tmp_path / "killed"
    shutil.copytree(out, work)
    rows_file = work / "rows.jsonl"
    lines = rows_file.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    rows_file.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    assert len(load_rows(work)) == 5  # the torn line is ignored
    counter = CallCounter(monkeypatch)
    results = run_comparison(settings, work).to_dict()
    assert counter.calls == [(last["method"], last["seed"])]
    assert len(results["rows"]) == 6 and len(load_rows(work)) == 6
    assert {(r["method"], r["seed"]) for r in results["rows"]} == {(m, s) for m in METHODS for s in [0, 1]}


def test_different_configuration_is_refused_unless_forced(finished, tmp_path, monkeypatch):
    settings, out, _ = finished
    work = tmp_path / "other"
    shutil.copytree(out, work)
    other = CompareSettings(models=settings.models, methods=["none"], seeds=[0], **{**SMALL, "seq_len": 48})
    with pytest.raises(ResultsExistError, match="--force"):
        run_comparison(other, work)
    assert len(load_rows(work)) == 6  # nothing lost
    counter = CallCounter(monkeypatch)
    results = run_comparison(other, work, force=True).to_dict()
    assert counter.calls == [("none", 0)]
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [("none", 0)]
    assert json.loads((work / "results.json").read_text())["settings"]["seq_len"] == 48


def test_failed_run_without_rows_does_not_block_the_folder(tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    bad = CompareSettings(models=[tiny], methods=["none"], seeds=[0], eval_text=str(short),
                          **{k: v for k, v in SMALL.items()})
    with pytest.raises(ValueError, match="too short"):
        run_comparison(bad, tmp_path / "out")
    good = CompareSettings(models=[tiny], methods=["none"], seeds=[0], **SMALL)
    results = run_comparison(good, tmp_path / "out").to_dict()
    assert len(results["rows"]) == 1


def test_settings_validation():
    with pytest.raises(ValueError, match="valid methods: none"):
        CompareSettings(models=["x"], methods=["bogus"])
    with pytest.raises(ValueError, match="at least one seed"):
        CompareSettings(models=["x"], seeds=[])
    unsupported = CompareSettings(models=["x"], devices=["rram-wan2022"], t_inference=[3600.0])  # pure: no device read
    with pytest.raises(ValueError, match="rram-wan2022"):
        resolve(unsupported)  # the device is looked at once, by resolve (run_comparison's first step)


def test_results_do_not_depend_on_where_the_model_lives(tiny, tmp_path):
    """Output noise is seeded from the model's content, not its folder: a copy elsewhere gives the same numbers."""
    copy = tmp_path / "elsewhere" / "same-model"
    shutil.copytree(tiny, copy)
    rows = []
    for i, folder in enumerate((tiny, str(copy))):
        settings = CompareSettings(models=[folder], methods=["none"], seeds=[0], **SMALL)
        rows.append(run_comparison(settings, tmp_path / f"out{i}").to_dict()["rows"][0])
    assert rows[0]["model"] != rows[1]["model"]
    for metric in ("ppl", "load_cv", "router_fidelity"):
        assert rows[0][metric] == rows[1][metric], metric
