"""Diagnosis on the per-chip loop: resume after a kill, the folder lock, sharding, typed rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import tiny_model

from romer_aihwkit.errors import ResultsFolderError
from romer_aihwkit.evaluation.diagnosis_report import Diagnosis, render_diagnosis
from romer_aihwkit.evaluation.records import load_rows
from romer_aihwkit.experiments.chip_loop import ChipLoop, ShardsPendingError, process, shard
from romer_aihwkit.experiments.diagnose import DiagnosisRow, diagnose
from romer_aihwkit.outputs import LOCK_FILE, ResultsLockedError

SEEDS = [0, 1]
SETUPS = 7  # gaussian-5 models programming noise only: full, alone x3, off x2 (one non-ideality: no "off"), floor


@pytest.fixture(scope="module")
def model():
    return tiny_model("olmoe")


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(3))


def _run(model, blocks, **kwargs):
    return diagnose(model, "gaussian-5", blocks, seeds=SEEDS, batch_size=2, **kwargs)


def _numbers(result):
    return {k: v for k, v in result.to_dict().items() if k != "seconds"}


@pytest.fixture(scope="module")
def reference(model, blocks):
    return _run(model, blocks)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_recomputes_nothing_finished(model, blocks, reference, tmp_path):
    out = tmp_path / "d"

    def kill(row):
        raise _Killed

    with pytest.raises(_Killed):
        _run(model, blocks, out_dir=out, on_row=kill)  # dies right after the first row is on disk
    first = load_rows(out, DiagnosisRow.from_dict)
    assert len(first) == 1
    with open(out / "rows.jsonl", "a") as f:
        f.write('{"kind": "alone", "comp')  # a line torn by the kill
    computed: list[DiagnosisRow] = []
    result = _run(model, blocks, out_dir=out, on_row=computed.append)
    assert len(computed) == SETUPS * len(SEEDS) - 1 and first[0].key not in {r.key for r in computed}
    assert _numbers(result) == _numbers(reference)
    assert json.loads((out / "diagnosis.json").read_text())["budget"] == reference.budget
    # a rerun of the same diagnosis computes nothing; resume=False starts again
    again: list[DiagnosisRow] = []
    assert _numbers(_run(model, blocks, out_dir=out, on_row=again.append)) == _numbers(reference) and not again
    _run(model, blocks, out_dir=out, on_row=again.append, resume=False)
    assert len(again) == SETUPS * len(SEEDS)


def test_other_settings_start_again(model, blocks, tmp_path):
    out = tmp_path / "d"
    _run(model, blocks, out_dir=out)
    computed: list[DiagnosisRow] = []
    diagnose(model, "gaussian-5", blocks[:1], seeds=SEEDS, batch_size=2, out_dir=out, on_row=computed.append)
    assert len(computed) == SETUPS * len(SEEDS)  # other blocks: no row is reused
    assert len(load_rows(out, DiagnosisRow.from_dict)) == SETUPS * len(SEEDS)


def test_a_second_run_is_refused_while_the_folder_is_locked(model, blocks, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    code = textwrap.dedent("""
        import sys, time
        from filelock import FileLock
        lock = FileLock(sys.argv[1]); lock.acquire()
        print("locked", flush=True); time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsLockedError, match="in use by another"):
            _run(model, blocks, out_dir=out)
        assert not (out / "rows.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_shards_cover_every_row_once(model, blocks, reference, tmp_path):
    out = tmp_path / "sharded"
    done: dict[int, list[DiagnosisRow]] = {0: [], 1: []}
    with pytest.raises(ShardsPendingError, match="rows of other processes"):
        _run(model, blocks, out_dir=out, rank=0, world_size=2, on_row=done[0].append)  # no launcher waits for rank 1
    result = _run(model, blocks, out_dir=out, rank=1, world_size=2, on_row=done[1].append)
    assert {r.seed for r in done[0]} == {0} and {r.seed for r in done[1]} == {1}
    keys = [r.key for r in load_rows(out, DiagnosisRow.from_dict)]
    assert len(keys) == len(set(keys)) == SETUPS * len(SEEDS)
    assert sorted(p.name for p in out.glob("rows*.jsonl")) == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    assert _numbers(result) == _numbers(reference)  # the same chip instances as one process


def test_shard_deals_round_robin():
    assert shard(list(range(5)), 0, 2) == [0, 2, 4] and shard(list(range(5)), 1, 2) == [1, 3]
    assert shard(["a"], 0, 1) == ["a"]


def test_rows_round_trip_and_refuse_damage(tmp_path):
    row = DiagnosisRow("full", "all", "all", 3, 12.5, ({"act_crest": 2.0, "outlier_channels": 0},),
                       ({"name": "model.layers.0.mlp", "experts": 8, "router_weight_crest": 2.1},))
    assert DiagnosisRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    plain = DiagnosisRow("off", "router", "all", 0, 11.0)
    assert "layers" not in plain.to_dict() and DiagnosisRow.from_dict(plain.to_dict()) == plain
    loop = ChipLoop(tmp_path, process(0, 1), DiagnosisRow.from_dict)
    loop.append(row)
    assert ChipLoop(tmp_path, process(0, 1), DiagnosisRow.from_dict).done == {row.key}
    (tmp_path / "rows.jsonl").write_text('{"kind": "full"}\n')
    with pytest.raises(ResultsFolderError, match="line 1: not a diagnosis row"):
        load_rows(tmp_path, DiagnosisRow.from_dict)


def test_committed_diagnoses_re_render():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "docs" / "results" / "diagnose"
    folders = sorted(p for p in root.iterdir() if (p / "diagnosis.json").is_file())
    assert folders
    for folder in folders:
        text = (folder / "diagnosis.json").read_text()
        result = json.loads(text)
        assert json.dumps(result, indent=2) == text  # written back byte for byte
        typed = Diagnosis.from_dict(result)
        assert json.dumps(typed.to_dict(), indent=2) == text and typed.reading == result["reading"]
        assert typed.row("full")["kind"] == "full"
        without = {k: v for k, v in result.items() if k != "reading"}  # a reading is recomputed when absent
        assert Diagnosis.from_dict(without).reading[0] == result["reading"][0]
        plots = [folder / "layers_heatmap.png", folder / "budget.png"]
        assert render_diagnosis(typed, plots, folder) == (folder / "report.md").read_text(), folder.name


def test_diagnosis_reads_like_the_old_dict_with_a_deprecation_warning(reference):
    with pytest.warns(DeprecationWarning, match=r"use diagnosis\.reading"):
        assert reference["reading"] == reference.reading
