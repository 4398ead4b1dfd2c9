"""Downstream tasks through lm-evaluation-harness: bundled tasks offline, in-memory chip instances."""

from __future__ import annotations

import builtins
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from romer_aihwkit.errors import UserError  # noqa: E402
from romer_aihwkit.evaluation.tasks import (  # noqa: E402
    BUNDLED_TASKS_DIR,
    _offline,
    _scan_tasks,
    bundled_tasks,
    evaluate_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["shakespeare_line_end", "shakespeare_speaker"]


@pytest.fixture(scope="module")
def olmoe():
    import romer_aihwkit as ra

    return ra.load_bundled_model("olmoe-tiny")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_bundled_tasks_are_listed_and_well_formed():
    assert set(TASKS) <= set(bundled_tasks())
    assert "shakespeare" in bundled_tasks()  # the tag of both
    for name in ("line_end", "speaker"):
        docs = [json.loads(line) for line in (BUNDLED_TASKS_DIR / "shakespeare" / f"{name}.jsonl").open()]
        assert len(docs) == 500
        for doc in docs:
            assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
            assert 0 <= doc["label"] < 4
        labels = [d["label"] for d in docs]
        assert max(labels.count(i) for i in range(4)) < 0.3 * len(docs)  # answers spread over positions


def test_only_tasks_with_local_data_run_offline(tmp_path, monkeypatch):
    base = "output_type: multiple_choice\ndoc_to_text: x\ndoc_to_choice: x\ndoc_to_target: 0\n"
    (tmp_path / "base.yaml").write_text("dataset_path: json\n" + base)
    (tmp_path / "a.yaml").write_text("task: a_json\ntag: mixed\ndataset_path: json\n" + base)
    (tmp_path / "b.yaml").write_text("task: b_hub\ntag: mixed\ndataset_path: some_org/some_dataset\n" + base)
    (tmp_path / "c.yaml").write_text("task: c_included\ninclude: base.yaml\n")
    (tmp_path / "d.yaml").write_text("task: d_custom\ntag: all_local\ncustom_dataset: !function utils.load\n" + base)
    (tmp_path / "g.yaml").write_text("group: g_local\ntask: [a_json, d_custom]\n")
    names, local = _scan_tasks([tmp_path])
    assert names == {"a_json", "b_hub", "c_included", "d_custom", "mixed", "all_local", "g_local"}
    assert local == {"a_json", "c_included", "d_custom", "all_local", "g_local"}  # not b_hub, nor a tag with it
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with _offline(True):
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ


def test_task_data_is_reproducible_from_the_bundled_plays():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tasks.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_speaker_choices_never_offer_the_previous_speaker():
    docs = [json.loads(line) for line in (BUNDLED_TASKS_DIR / "shakespeare" / "speaker.jsonl").open()]
    for doc in docs:
        names = [c.split("\n")[0][:-1] for c in doc["choices"]]
        assert names[doc["label"]] == doc["speaker"]
        assert doc["previous_speaker"] not in names
        assert len({c.split("\n", 1)[1] for c in doc["choices"]}) == 1  # same line, four speakers


def test_bundled_tasks_run_offline_on_an_in_memory_model(olmoe, no_network, capfd):
    model, tok = olmoe
    res = evaluate_tasks(model, tok, "shakespeare", limit=8)
    err = capfd.readouterr().err
    assert "loglikelihood requests" not in err  # lm-eval's bars stay quiet by default
    from lm_eval import evaluator

    assert evaluator.add_env_info.__module__ == "lm_eval.loggers.utils"  # lm-eval's own again afterwards
    assert set(res) == set(TASKS)
    for metrics in res.values():
        assert metrics["n"] == 8
        for key in ("acc", "acc_norm"):
            assert 0.0 <= metrics[key] <= 1.0 and metrics[key] * 8 == round(metrics[key] * 8)
            assert metrics[f"{key}_stderr"] >= 0.0


def test_ideal_chip_reproduces_digital_accuracy(olmoe, no_network):
    import romer_aihwkit as ra

    model, tok = olmoe
    digital = evaluate_tasks(model, tok, ["shakespeare_line_end"], limit=16)
    ideal = ra.convert_to_analog_moe(model, "ideal")
    ideal.program_analog_weights(seed=0)
    assert evaluate_tasks(ideal, tok, ["shakespeare_line_end"], limit=16) == digital


def test_include_path_task_and_errors(olmoe, tmp_path, no_network):
    model, tok = olmoe
    data = tmp_path / "local.jsonl"
    docs = [{"context": f"alpha beta gamma {i} alpha beta gamma {i} alpha beta gamma {i}",
             "choices": [f"zq xv {i} kw", f"alpha beta gamma {i}", "qq pp rr", "mm nn oo"], "label": 1}
            for i in range(6)]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "local.yaml").write_text(
        "task: local_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    res = evaluate_tasks(model, tok, ["local_task"], include_path=tmp_path)
    assert set(res["local_task"]) == {"acc", "acc_stderr", "n"}  # no acc_norm: the task does not report it
    assert res["local_task"]["n"] == 6 and 0.0 <= res["local_task"]["acc"] <= 1.0
    with pytest.raises(UserError, match="unknown lm-eval task.*no_such_task"):
        evaluate_tasks(model, tok, ["no_such_task"])
    with pytest.raises(FileNotFoundError, match="--include-path"):
        evaluate_tasks(model, tok, ["local_task"], include_path=tmp_path / "missing")
    with pytest.raises(UserError, match="--limit"):
        evaluate_tasks(model, tok, TASKS, limit=0)


def test_missing_lm_eval_names_the_extra(olmoe, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "lm_eval", raising=False)
    with pytest.raises(UserError, match=r"pip install -e '\.\[eval\]'"):
        evaluate_tasks(*olmoe, TASKS, limit=2)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from test_runner import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("tasks-tiny"))


def test_compare_with_tasks_and_hwa_through_the_cli(tiny_folder, tmp_path):
    """`compare --tasks ... --methods global,hwa,hwa+romer`: accuracies per row, summary, report, plot, HWA cache."""
    from typer.testing import CliRunner

    from romer_aihwkit.cli import app

    train = tmp_path / "train.txt"
    from romer_aihwkit.data import read_bundled_text

    train.write_text(read_bundled_text("train")[:20000])
    out = tmp_path / "out"
    args = ["compare", "--model", tiny_folder, "--devices", "pcm", "--methods", "global,hwa,hwa+romer",
            "--seeds", "2", "--seq-len", "32", "--eval-blocks", "2", "--calib-blocks", "2",
            "--tasks", "shakespeare_line_end", "--limit", "4", "--train-text", str(train), "--hwa-steps", "2",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 6
    for row in results["rows"]:
        metrics = row["tasks"]["shakespeare_line_end"]
        assert metrics["n"] == 4 and 0 <= metrics["acc"] <= 1 and 0 <= metrics["acc_norm"] <= 1
    for entry in results["summary"]:
        stats = entry["tasks"]["shakespeare_line_end/acc"]
        assert stats["n"] == 2 and 0 <= stats["mean"] <= 1
    settings = results["settings"]
    assert set(settings["digital_tasks"][tiny_folder]) == {"shakespeare_line_end"}
    (record,) = settings["hwa_training"].values()
    assert record["config"]["steps"] == 2 and record["device"] == "pcm"
    checkpoints = [p for p in (out / "hwa").iterdir() if not p.name.startswith(".")]
    assert len(checkpoints) == 1  # one training shared by hwa and hwa+romer and both chip instances
    report = (out / "report.md").read_text()
    assert "Downstream tasks" in report and "shakespeare_line_end/acc" in report and "HWA training" in report
    assert "shakespeare_line_end/acc" in (out / "results.csv").read_text().splitlines()[0]
    assert list(out.glob("task_accuracy_*.png"))
    # hwa and global share no conversion: different weights, different numbers on the same chips
    by = {(r["method"], r["seed"]): r["ppl"] for r in results["rows"]}
    assert by[("hwa", 0)] != by[("global", 0)]
    # options of --tasks without tasks are refused in one line
    bad = CliRunner().invoke(app, ["compare", "--model", tiny_folder, "--limit", "3", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--tasks" in bad.stderr
