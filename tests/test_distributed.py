"""Sharding chip instances over 2 processes with `accelerate launch` gives the 1-process results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_runner import make_tiny_model_folder

ARGS = ["--devices", "pcm", "--methods", "global,none,romer", "--seeds", "2", "--t-inference", "1h",
        "--seq-len", "32", "--eval-blocks", "2", "--calib-blocks", "2", "--json"]


def _single_and_sharded(tmp_path: Path, command: str, args: list[str], port: int) -> tuple[Path, Path]:
    """Run ``romer-aihwkit COMMAND`` on a tiny model in one process and with ``accelerate launch`` on two;
    the two output folders."""
    model = make_tiny_model_folder(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "romer_aihwkit.cli", command, "--model", model, *args, "--out", str(single)],
                   check=True, env=env, capture_output=True, timeout=600)
    sharded = tmp_path / "sharded"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "romer_aihwkit.cli", command, "--model",
         model, *args, "--out", str(sharded)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return single, sharded


def _rows(out: Path) -> dict[tuple, dict]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {(r["method"], r["seed"]): r for r in rows}


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed next to this python")
def test_two_process_compare_equals_single_process(tmp_path):
    single, sharded = _single_and_sharded(tmp_path, "compare", ARGS, 29533)
    assert sorted(p.name for p in sharded.glob("rows*.jsonl")) == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    for p in sharded.glob("rows*.jsonl"):
        assert len(p.read_text().splitlines()) == 3  # one chip instance x three methods per process
    a, b = _rows(single), _rows(sharded)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        for metric in ("ppl", "load_cv", "max_load_ratio", "router_fidelity"):
            assert a[key][metric] == pytest.approx(b[key][metric], rel=1e-6, abs=1e-9), (key, metric)


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed next to this python")
def test_two_process_diagnose_equals_single_process(tmp_path):
    args = ["--device", "gaussian-5", "--seeds", "2", "--seq-len", "24", "--eval-blocks", "2", "--json"]
    single, sharded = _single_and_sharded(tmp_path, "diagnose", args, 29534)
    assert sorted(p.name for p in sharded.glob("rows*.jsonl")) == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    seeds = [{json.loads(line)["seed"] for line in p.read_text().splitlines()} for p in sorted(sharded.glob("rows*"))]
    assert seeds == [{0}, {1}]  # one chip instance per process
    a, b = (json.loads((out / "diagnosis.json").read_text()) for out in (single, sharded))
    def per_seed(d):
        return [(r["kind"], r["component"], r["nonideality"], s, p) for r in d["budget"] for s, p in r["per_seed"].items()]

    assert [k[:4] for k in per_seed(a)] == [k[:4] for k in per_seed(b)] and len(per_seed(a)) == 14
    assert [k[4] for k in per_seed(a)] == pytest.approx([k[4] for k in per_seed(b)], rel=1e-6)
    for x, y in zip(a["layers"], b["layers"]):
        assert x.keys() == y.keys() and [x[k] for k in x if k != "name"] == pytest.approx(
            [y[k] for k in y if k != "name"], rel=1e-6, abs=1e-9)
