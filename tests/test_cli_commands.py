"""The `compare`, `evaluate`, `calibrate`, `convert` and `demo` commands on a tiny local model folder."""

from __future__ import annotations

import json

import pytest
from test_runner import make_tiny_model_folder
from typer.testing import CliRunner

from romer_aihwkit.cli import app

runner = CliRunner()
SMALL = ["--seq-len", "32", "--eval-blocks", "2", "--calib-blocks", "2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-olmoe-cli"))


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def _assert_pngs(folder, at_least):
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) >= at_least, [p.name for p in pngs]
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return pngs


def test_compare_writes_every_output(tiny, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--model", tiny, "--devices", "pcm", "--methods", "none,romer",
                                 "--seeds", "2", "--t-inference", "1h", *SMALL, "--out", str(out)],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"settings", "rows", "summary"}
    # romer edits the model: `global` joins (first) for its recovery, and every row carries the controls
    assert len(results["rows"]) == 6 and {r["method"] for r in results["rows"]} == {"global", "none", "romer"}
    assert results["settings"]["methods"] == ["global", "none", "romer"] and results["settings"]["controls"] is True
    assert all("edit_ppl" in r and "recovered" in r for r in results["rows"])
    assert results["settings"]["t_inference"] == [3600.0] and results["settings"]["seeds"] == [0, 1]
    assert {"ppl", "ppl_std", "ppl_ci95", "n", "edit_ppl", "recovered_ci95"} <= set(results["summary"][0])
    assert (out / "results.csv").read_text().count("\n") == 7
    report = (out / "report.md").read_text()
    assert "| method | ppl ± CI95 |" in report and "aihwkit" in report
    assert "| edit ± CI95 | recovered ± CI95 | masked |" in report and "Noise-free controls" in report
    names = {p.name for p in _assert_pngs(out, 3)}
    assert any(n.startswith("expert_load_") for n in names) and any(n.startswith("ppl_by_method_") for n in names)
    assert any(n.startswith("recovery_") for n in names)
    assert "romer" in result.stdout and "digital ppl" in result.stdout  # the rich table
    assert "recovered" in result.stdout and "edit" in result.stdout
    # another configuration in the same folder: refused unless --force
    other = runner.invoke(app, ["compare", "--model", tiny, "--methods", "none", "--seeds", "1",
                                "--seq-len", "40", "--eval-blocks", "2", "--calib-blocks", "2", "--out", str(out)])
    _assert_one_line_error(other, "different configuration", "--force")


def test_compare_without_controls_says_so(tiny, tmp_path):
    out = tmp_path / "plain"
    result = runner.invoke(app, ["compare", "--model", tiny, "--devices", "pcm", "--methods", "none,romer",
                                 "--seeds", "1", *SMALL, "--no-controls", "--out", str(out)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["controls"] is False and results["settings"]["methods"] == ["none", "romer"]
    assert len(results["rows"]) == 2 and not any("edit_ppl" in r or "recovered" in r for r in results["rows"])
    assert "edit_ppl" not in (out / "results.csv").read_text()
    assert "controls were turned off" in (out / "report.md").read_text()
    assert "controls were turned off" in result.stdout.replace("\n", " ")
    assert not list(out.glob("recovery_*.png"))


def test_unknown_method_lists_valid_ones(tiny, tmp_path):
    result = runner.invoke(app, ["compare", "--model", tiny, "--methods", "none,bogus", *SMALL,
                                 "--out", str(tmp_path / "x")])
    _assert_one_line_error(result, "bogus", "valid methods", "romer", "hetero")
    assert not (tmp_path / "x").exists()


def test_unknown_device_lists_presets(tiny, tmp_path):
    result = runner.invoke(app, ["compare", "--model", tiny, "--devices", "pcm,no-such-chip", *SMALL,
                                 "--out", str(tmp_path / "x")])
    _assert_one_line_error(result, "no-such-chip", "rram-wan2022")


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--t-inference", "1 fortnight"], "invalid --t-inference"),
    (["--devices", "rram-wan2022", "--t-inference", "1h"], "rram-wan2022"),
])
def test_bad_settings_are_one_line_errors(tiny, tmp_path, args, fragment):
    result = runner.invoke(app, ["compare", "--model", tiny, *SMALL, *args, "--out", str(tmp_path / "x")])
    _assert_one_line_error(result, fragment)


def test_short_eval_text_and_overlap_warning(tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    result = runner.invoke(app, ["compare", "--model", tiny, "--methods", "none", "--seeds", "1", *SMALL,
                                 "--eval-text", str(short), "--calib-text", str(short),
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Warning:" in result.stderr and "same file" in result.stderr
    assert "too short" in result.stderr


def test_missing_model_folder(tmp_path):
    result = runner.invoke(app, ["compare", "--model", str(tmp_path / "nowhere"), "--methods", "none",
                                 "--out", str(tmp_path / "x")])
    _assert_one_line_error(result, "not found")


def test_evaluate_one_method(tiny, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--model", tiny, "--device", "pcm", "--method", "global",
                                 "--seeds", "1", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [("global", 0)]
    assert (out / "report.md").is_file()
    two = runner.invoke(app, ["evaluate", "--model", tiny, "--method", "none,romer", "--out", str(out)])
    _assert_one_line_error(two, "one --method")


def test_calibrate_writes_calibration_and_report(tiny, tmp_path):
    out = tmp_path / "cal"
    result = runner.invoke(app, ["calibrate", "--model", tiny, "--device", "pcm", "--seed", "1",
                                 "--t-inference", "1d", "--seq-len", "32", "--calib-blocks", "4",
                                 "--percentiles", "10,50,90", "--tau", "0.5", "--out", str(out)],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert (out / "calibration.safetensors").stat().st_size > 0
    meta = json.loads((out / "calibration.json").read_text())
    assert meta["seed"] == 1 and meta["t_inference"] == 86400.0 and len(meta["layers"]) == 2
    report = json.loads((out / "report.json").read_text())
    romer = report["calibration"]["callbacks"]["romer"]
    assert romer["settings"]["percentiles"] == [10.0, 50.0, 90.0] and romer["settings"]["tau"] == 0.5
    assert len(romer["layers"]) == 2 and {"before", "after", "replaced"} <= set(romer["layers"][0])
    assert "load_cv" in result.stdout and "→" in result.stdout
    # the saved calibration loads back onto the same chip instance
    from romer_aihwkit.analog import convert_to_analog_moe
    from romer_aihwkit.calibration import load_calibration
    from romer_aihwkit.models import load_model

    model, _ = load_model(tiny)
    model = convert_to_analog_moe(model, "pcm")
    model.program_analog_weights(seed=1)
    model.drift_analog_weights(86400.0)
    assert load_calibration(model, out / "calibration")["seed"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["--percentiles", "5,50"], "three numbers"),
    (["--replacement", "sideways"], "replacement must be one of"),
    (["--replacement", "none", "--no-normalize"], "would do nothing"),
    (["--max-masked-share", "2"], "max_masked_share"),
    (["--max-masked-share", "lots"], "--max-masked-share must be"),
])
def test_calibrate_bad_options(tiny, tmp_path, args, fragment):
    result = runner.invoke(app, ["calibrate", "--model", tiny, *args, "--out", str(tmp_path / "c")])
    _assert_one_line_error(result, fragment)


def test_convert_saves_analog_state(tiny, tmp_path):
    out = tmp_path / "conv"
    result = runner.invoke(app, ["convert", "--model", tiny, "--device", "pcm", "--seed", "0",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["analog_summary"]["router"] == 2 and info["analog_summary"]["expert"] == 2 * 8 * 2
    assert info["t_inference"] == 3600.0
    assert (out / "analog_state.safetensors").stat().st_size > 0
    assert (out / "model" / "config.json").is_file() and (out / "convert.json").is_file()
    table = runner.invoke(app, ["convert", "--model", tiny, "--digital-router"], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert "analog expert" in table.stdout and "routers digital" in table.stdout
    bad = runner.invoke(app, ["convert", "--model", tiny, "--t-inference", "1h"])
    _assert_one_line_error(bad, "--seed")


def test_demo_quick_produces_every_output(tiny, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--model", tiny, "--out", str(out)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    from romer_aihwkit.cli import DEMO_METHODS

    assert [s["method"] for s in results["summary"]] == DEMO_METHODS
    assert len(results["rows"]) == len(DEMO_METHODS) * 2
    assert (out / "results.csv").is_file() and (out / "report.md").is_file()
    names = {p.name for p in _assert_pngs(out, 2)}
    assert any(n.startswith("expert_load_") for n in names)
    assert f"are in {out.resolve()}" in result.stdout.strip().splitlines()[-1]


def test_methods_command_lists_registry():
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0
    assert {"none", "romer", "hetero", "romer+hetero"} <= set(json.loads(result.stdout))
