"""Noise-free controls: which methods edit the model, `edit_ppl`, `recovered`, and how results show them."""

from __future__ import annotations

import json

import pytest
import torch

from romer_aihwkit.evaluation import (
    ComparisonResults,
    ResultRow,
    edit_dominates,
    mean_std_ci,
    recovery_beyond_edit,
    summarize,
    with_recovery,
)
from romer_aihwkit.evaluation.report import render_report
from romer_aihwkit.experiments.methods import METHODS, Method, get_method, register_method

CHIP = dict(model="m", device="pcm", t_inference=3600.0, digital_ppl=10.0)


def _row(method, seed, ppl, edit=None):
    return ResultRow(method=method, seed=seed, ppl=ppl, edit_ppl=edit, **CHIP)


def test_methods_that_edit_the_model():
    editing = {"romer", "romer-norm", "romer-replace", "romer-split", "romer-seq", "romer-auto", "romer+hetero",
               "hetero", "router-ensemble", "hwa", "hwa+romer", "clip"}
    chip_only = {"none", "global", "per-column", "remap-layer", "input-range", "digital-router"}
    for name in editing:
        assert get_method(name).edits_model, name
    for name in chip_only:
        assert not get_method(name).edits_model, name
    # derived from the fields: any calibration callback, any weight clip, any HWA model edits it
    assert Method("x", "", callbacks=lambda: [object()]).edits_model
    assert Method("x", "", device_overrides={"weight_clip": "fixed", "weight_clip_value": 1.0}).edits_model
    assert Method("x", "", hwa=True).edits_model
    assert not Method("x", "", device_overrides={"drift_compensation": "per-column"}).edits_model


def test_recovered_is_zero_when_the_edit_alone_explains_the_gain():
    # global's gap is 4 ppl; the method gains 2 over global, and its noise-free edit alone lowers ppl by 2
    rows = with_recovery([_row("global", 0, 14.0, 0.0), _row("romer", 0, 12.0, -2.0)])
    by = {r.method: r for r in rows}
    assert by["romer"].recovered == pytest.approx(0.0) and by["global"].recovered == 0.0
    beyond = recovery_beyond_edit(rows)[("m", "pcm", "romer", 3600.0)]
    assert beyond == pytest.approx([0.0]) and edit_dominates(-2.0, beyond[0])


def test_recovered_counts_what_the_edit_does_not_explain():
    # same gain, no edit: 2 of the 4 ppl gap recovered; an edit that *costs* 1 ppl means 3 of 4 were recovered
    rows = with_recovery([_row("global", 0, 14.0, 0.0), _row("a", 0, 12.0, 0.0), _row("b", 0, 12.0, 1.0),
                          _row("c", 0, 10.5, -0.5)])
    by = {r.method: r.recovered for r in rows}
    assert by["a"] == pytest.approx(0.5) and by["b"] == pytest.approx(0.75) and by["c"] == pytest.approx(0.75)
    beyond = recovery_beyond_edit(rows)
    assert beyond[("m", "pcm", "c", 3600.0)] == pytest.approx([3.0]) and beyond[("m", "pcm", "b", 3600.0)] == [3.0]
    assert not edit_dominates(-0.5, 3.0) and not edit_dominates(0.0, 2.0)
    assert edit_dominates(0.5, -0.1)  # a method that makes the noise worse beyond its edit: always flagged


def test_recovered_is_paired_per_chip_and_summarised_over_chips():
    # chip-to-chip spread is large, the paired share is constant: the interval must be that of the per-chip values
    rows = []
    levels, wiggle = (14.0, 20.0, 11.0, 30.0), (0.1, -0.2, 0.05, 0.3)
    for seed, (level, d) in enumerate(zip(levels, wiggle)):
        gap = level - 10.0
        rows += [_row("global", seed, level, 0.0), _row("romer", seed, level - 0.5 * gap + 1.0 + d, 1.0)]
    typed = with_recovery(rows)
    values = [r.recovered for r in typed if r.method == "romer"]
    assert values == pytest.approx([0.5 - d / (lv - 10.0) for lv, d in zip(levels, wiggle)])
    entry = next(e for e in summarize(typed) if e.method == "romer")
    expected = mean_std_ci(values)
    assert entry.mean("recovered") == pytest.approx(expected["mean"])
    assert entry.ci95("recovered") == pytest.approx(expected["ci95"])
    assert entry.mean("edit_ppl") == pytest.approx(1.0)


def test_recovered_needs_global_on_the_same_chip():
    rows = with_recovery([_row("global", 0, 14.0, 0.0), _row("romer", 1, 12.0, 0.0),
                          ResultRow(method="romer", seed=0, ppl=12.0, **CHIP)])  # seed 1: no global; no edit: no control
    assert all(r.recovered is None for r in rows if r.method == "romer")
    # a chip where global has no gap: undefined, not infinite
    assert with_recovery([_row("global", 0, 10.0, 0.0), _row("romer", 0, 9.0, 0.0)])[1].recovered is None


def test_rows_and_summaries_without_controls_are_unchanged():
    row = {"model": "m", "device": "pcm", "method": "romer", "t_inference": 3600.0, "seed": 0, "ppl": 12.0}
    typed = ResultRow.from_dict(row)
    assert typed.to_dict() == row and with_recovery([typed]) == [typed]
    assert "edit_ppl" not in summarize([typed])[0].to_dict()


def _controlled_results():
    rows = [_row("global", s, 14.0 + s, 0.0) for s in (0, 1, 2)]
    rows += [_row("romer", s, 12.0 + s, -2.0) for s in (0, 1, 2)]  # the edit explains the gain
    rows += [_row("digital-router", s, 11.0 + s, 0.0) for s in (0, 1, 2)]  # a real recovery
    typed = with_recovery(rows)
    return ComparisonResults({"models": ["m"], "devices": ["pcm"], "seeds": [0, 1, 2],
                              "methods": ["global", "romer", "digital-router"], "controls": True,
                              "digital_ppl": {"m": 10.0}}, tuple(typed), tuple(summarize(typed)))


def test_report_flags_rows_whose_edit_exceeds_the_recovery(tmp_path):
    results = _controlled_results()
    text = render_report(results)
    assert "| edit ± CI95 | recovered ± CI95 | masked |" in text and "Noise-free controls" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "⚠" in lines["romer"] and "⚠" not in lines["digital-router"] and "⚠" not in lines["global"]
    assert "-2.00 ± 0.00" in lines["romer"]
    from romer_aihwkit.evaluation.plots import write_plots
    from romer_aihwkit.experiments.runner import write_results

    data = write_results(tmp_path, results.settings, results.rows)
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[13:16] == ["edit_ppl", "recovered", "max_masked_share"]
    assert sorted(ComparisonResults.from_dict(data).rows, key=lambda r: r.key) == sorted(results.rows, key=lambda r: r.key)
    assert any(p.name.startswith("recovery_") for p in write_plots(data, tmp_path))
    off = render_report({"settings": {"controls": False, "methods": []}, "rows": [], "summary": []})
    assert "controls were turned off" in off


# ------------------------------------------------------------------ through the runner, with a real edit
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_runner import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("controls-tiny"))


@pytest.fixture
def masking_method():
    """ROMER replacement with a high threshold: it masks experts even on a noise-free chip (an edit)."""
    from romer_aihwkit.calibration import Romer

    method = register_method(Method("test-mask", "masks cold experts", callbacks=lambda: [Romer(normalize=False,
                                                                                                tau=0.95)]))
    yield method
    del METHODS[method.name]


def test_compare_measures_the_edit_on_the_ideal_device(tiny, tmp_path, masking_method):
    import romer_aihwkit as ra
    from romer_aihwkit.data import text_blocks
    from romer_aihwkit.evaluation import perplexity
    from romer_aihwkit.experiments import CompareSettings, run_comparison
    from romer_aihwkit.models import load_model

    small = dict(devices=["pcm"], seq_len=32, eval_blocks=2, calib_blocks=2, batch_size=4)
    settings = CompareSettings(models=[tiny], methods=["test-mask"], seeds=[3], **small)
    assert settings.methods == ("global", "test-mask")  # frozen settings keep lists as tuples
    results = run_comparison(settings, tmp_path / "out").to_dict()
    row = next(r for r in results["rows"] if r["method"] == "test-mask")
    glob = next(r for r in results["rows"] if r["method"] == "global")
    # the control by hand: the same method on the ideal device, the same calibration blocks and chip seed
    digital, tok = load_model(tiny)
    evals = text_blocks("bundled", tok, seq_len=32, split="test", max_blocks=2)
    calib = text_blocks("bundled", tok, seq_len=32, split="validation", max_blocks=2)
    model = ra.convert_to_analog_moe(digital, "ideal")
    model.program_analog_weights(seed=3)
    report = ra.calibrate(model, calib, callbacks=masking_method.callbacks(), batch_size=4, progress=False)
    assert report["romer-replace"].replaced_experts > 0  # a real edit
    expected = perplexity(model, evals, batch_size=4, progress=False) - row["digital_ppl"]
    assert row["edit_ppl"] == pytest.approx(expected, rel=1e-4, abs=1e-4) and row["edit_ppl"] != 0.0
    assert len(row["masked_share"]) == 2 and all(0 < share <= 0.5 for share in row["masked_share"])  # this chip's
    assert row["recovered"] == pytest.approx(
        ((glob["ppl"] - row["ppl"]) + row["edit_ppl"]) / (glob["ppl"] - row["digital_ppl"]))
    saved = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert saved["controls"] is True


def test_controls_off_keep_the_methods_and_the_fingerprint_of_older_results(masking_method):
    from romer_aihwkit.experiments import CompareSettings

    on = CompareSettings(models=["x"], methods=["test-mask"], seeds=[0])
    off = CompareSettings(models=["x"], methods=["test-mask"], seeds=[0], controls=False)
    assert off.methods == ("test-mask",) and on.methods == ("global", "test-mask")
    # results written before controls existed had none: they keep their identity with controls off
    assert off.fingerprint() != on.fingerprint()
    plain = CompareSettings(models=["x"], methods=["none"], seeds=[0])
    assert plain.methods == ("none",)  # nothing edits the model: no control, nothing added


def test_edit_of_a_model_is_what_the_runner_records_for_the_ideal_device_itself(tiny, tmp_path, masking_method):
    """On the ideal device a method's row is its own control: edit = ppl - digital exactly."""
    from romer_aihwkit.experiments import CompareSettings, run_comparison

    settings = CompareSettings(models=[tiny], devices=["ideal"], methods=["global", "test-mask"], seeds=[0],
                               seq_len=32, eval_blocks=2, calib_blocks=2, batch_size=4)
    results = run_comparison(settings, tmp_path / "ideal").to_dict()
    row = next(r for r in results["rows"] if r["method"] == "test-mask")
    assert row["edit_ppl"] == pytest.approx(row["ppl"] - row["digital_ppl"])
    assert torch.isfinite(torch.tensor(row["ppl"]))


def test_controls_table_and_results_table_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from romer_aihwkit.evaluation.report import controls_table
    from romer_aihwkit.experiments.runner import write_results

    results = _controlled_results()
    lines = controls_table(results, "m", "pcm", 3600.0)
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    # romer: -2 vs global on every chip, all of it its edit: nothing recovered beyond, flagged
    assert cells["romer"][:3] == ["-2.00 ± 0.00", "-2.00 ± 0.00", "+0.00 ± 0.00"] and "⚠" in cells["romer"][3]
    assert cells["digital-router"][:3] == ["-3.00 ± 0.00", "0.00 ± 0.00", "+3.00 ± 0.00"]
    assert "⚠" not in cells["digital-router"][3]
    write_results(tmp_path, results.settings, results.rows)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "results_table.py"), str(tmp_path / "results.json"),
                          "--controls"], capture_output=True, text=True, check=True, cwd=root)
    assert "| romer | -2.00 ± 0.00 |" in out.stdout and "⚠" in out.stdout
    out = subprocess.run([sys.executable, str(root / "scripts" / "results_table.py"), str(tmp_path / "results.json"),
                          "--metric", "recovered"], capture_output=True, text=True, check=True, cwd=root)
    shares = mean_std_ci([3 / 4, 3 / 5, 3 / 6])  # per chip: 3 ppl recovered of a gap of 4 + seed
    assert f"| digital-router | {shares['mean']:.2f} ± {shares['ci95']:.2f} |" in out.stdout
