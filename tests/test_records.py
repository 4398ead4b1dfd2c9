"""Typed result records: rows, summary entries and results round-trip the files' formats exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from romer_aihwkit.errors import ResultsFolderError
from romer_aihwkit.evaluation import ComparisonResults, ResultRow, SummaryEntry, load_rows, summarize, summarize_rows
from romer_aihwkit.experiments import write_results

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
COMMITTED = sorted(p.parent for p in RESULTS.glob("*/results.json") if (p.parent / "rows.jsonl").is_file())

ROW = {"model": "m", "device": "pcm", "method": "romer", "t_inference": 3600.0, "seed": 3, "ppl": 12.5,
       "load_cv": 0.2, "max_load_ratio": 1.5, "tile_max_load_ratio": 1.5, "router_fidelity": 0.9,
       "load_entropy": 0.95, "replaced_experts": 2, "digital_ppl": 11.0, "stress": "none", "seconds": 1.0,
       "layers": [{"load": [0.5, 0.5], "reference_load": [0.6, 0.4]}],
       "tasks": {"speaker": {"acc": 0.5, "acc_stderr": 0.1}}}


def test_row_round_trips_with_and_without_optional_keys():
    row = ResultRow.from_dict(ROW)
    assert row.key == ("m", "pcm", "romer", 3600.0, 3) and row.layers is not None and len(row.layers) == 1
    assert json.dumps(row.to_dict()) == json.dumps(ROW)
    assert "layers" not in row.to_dict(layers=False)
    assert row.task_values() == {"speaker/acc": 0.5}
    old = {k: v for k, v in ROW.items() if k not in ("stress", "layers", "tasks", "tile_max_load_ratio")}
    old["future_metric"] = 7  # a key a later version may add: kept, not dropped
    again = ResultRow.from_dict(old)
    assert again.stress is None and again.extra == {"future_metric": 7}
    assert json.dumps(again.to_dict()) == json.dumps(old)


@pytest.mark.parametrize("bad, fragment", [
    ({"model": "m"}, "missing device, method, t_inference, seed, ppl"),
    ([1, 2], "missing model"),
    ({**ROW, "seed": "three"}, "t_inference/seed are not numbers"),
])
def test_a_damaged_row_names_where_it_is(bad, fragment):
    with pytest.raises(ResultsFolderError, match=fragment) as info:
        ResultRow.from_dict(bad, "rows.jsonl, line 4")
    assert str(info.value).startswith("rows.jsonl, line 4:")


def test_load_rows_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({"model": "m"}) + "\n")
    with pytest.raises(ResultsFolderError, match=r"rows\.jsonl, line 2: not a result row"):
        load_rows(tmp_path)
    path.write_text(json.dumps(ROW) + "\n{not json\n")
    with pytest.raises(ResultsFolderError, match=r"rows\.jsonl, line 2: not a JSON row"):
        load_rows(tmp_path)
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW)[:20])  # a torn last line from a kill
    assert load_rows(tmp_path) == [ResultRow.from_dict(ROW)]


def test_summary_entry_is_typed_and_keeps_the_flat_format():
    rows = [{**ROW, "seed": s, "ppl": p} for s, p in ((0, 10.0), (1, 12.0), (2, 14.0))]
    entry, = summarize(rows)
    assert entry.group == ("m", "pcm", 3600.0) and entry.seeds == (0, 1, 2) and entry.n == 3
    assert entry.mean("ppl") == pytest.approx(12.0) and entry.std("ppl") == pytest.approx(2.0)
    assert entry.tasks["speaker/acc"].n == 3
    flat = summarize_rows(rows)[0]
    assert list(flat)[:9] == ["model", "device", "method", "t_inference", "seeds", "ppl", "ppl_std", "ppl_ci95", "n"]
    assert flat["tasks"]["speaker/acc"] == {"n": 3, "mean": 0.5, "std": 0.0, "ci95": 0.0}
    back = SummaryEntry.from_dict(flat)
    assert json.dumps(back.to_dict()) == json.dumps(flat) and back.mean("ppl") == entry.mean("ppl")
    with pytest.raises(ResultsFolderError, match="summary"):
        SummaryEntry.from_dict({"model": "m"})


def test_summary_skips_missing_and_nan_values():
    rows = [{**ROW, "load_entropy": math.nan}, {**ROW, "seed": 4}]
    del rows[1]["tile_max_load_ratio"]
    entry, = summarize(rows)
    assert entry.metrics["load_entropy"].n == 1 and entry.metrics["tile_max_load_ratio"].n == 1 and entry.n == 2


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_results_load_and_are_rewritten_byte_for_byte(folder, tmp_path):
    """The committed results folders read into the records and write back unchanged."""
    text = (folder / "results.json").read_text()
    results = ComparisonResults.load(folder / "results.json")
    assert json.dumps(results.to_dict(), indent=2, default=str) == text
    rows = load_rows(folder)
    assert len(rows) == len(results.rows) and all(isinstance(r, ResultRow) for r in rows)
    write_results(tmp_path, results.settings, rows)
    assert (tmp_path / "results.json").read_text() == text
    assert (tmp_path / "results.csv").read_text() == (folder / "results.csv").read_text()


def test_results_groups_and_digital_values():
    rows = [{**ROW, "method": m, "seed": s} for m in ("romer", "none") for s in (0, 1)]
    results = ComparisonResults.from_dict({"settings": {"methods": ["none", "romer"], "stress": "none"},
                                           "rows": rows, "summary": summarize_rows(rows)})
    (key, entries), = results.groups().items()
    assert key == ("m", "pcm", 3600.0) and [e.method for e in entries] == ["none", "romer"]
    assert results.stress is None and results.digital_ppl("m") == 11.0 and results.digital_ppl("other") is None
    with pytest.raises(ResultsFolderError, match=r"x\.json, rows\[0\]"):
        ComparisonResults.from_dict({"rows": [{"model": "m"}]}, "x.json")


def test_results_read_like_the_old_dict_with_a_deprecation_warning():
    row = ResultRow("m", "pcm", "none", 3600.0, 0, 10.0, layers=({"load": [0.5, 0.5]},))
    results = ComparisonResults({"methods": ["none"]}, (row,), ())
    with pytest.warns(DeprecationWarning, match=r"use results\.rows"):
        assert results["rows"] == [row.to_dict(layers=False)]
    with pytest.warns(DeprecationWarning):
        assert results["settings"] == {"methods": ["none"]}
    assert ComparisonResults.from_dict(results.to_dict()) == ComparisonResults.from_dict(
        {"settings": {"methods": ["none"]}, "rows": [row.to_dict(layers=False)], "summary": []})


def test_calibration_report_reads_its_dict_and_the_replacements():
    from romer_aihwkit.calibration import CalibrationReport

    data = {"tokens": 64, "callbacks": {
        "romer": {"replaced_experts": 3, "layers": [{"masked_share": 0.25}, {"masked_share": 0.0}]},
        "router-align": {"layers": [{"scale": [1.0]}]},
        "romer#2": {"replaced_experts": 1, "layers": [{"masked_share": 0.125}, {"masked_share": 0.125}]}}}
    report = CalibrationReport.from_dict({**data, "input_range_tiles": 4})
    assert report.to_dict() == data and json.dumps(report.to_dict()) == json.dumps(data)
    assert report.replaced_experts == 4 and report.masked_share == [0.25, 0.125]
    assert CalibrationReport.from_dict({}).masked_share is None and CalibrationReport.from_dict({}).replaced_experts == 0
    with pytest.raises(AttributeError):
        report.tokens = 1  # type: ignore[misc]
