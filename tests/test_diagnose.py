"""The analog error diagnosis: toggles, budget arithmetic, per-layer statistics, outputs, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from romer_aihwkit.analog import analog_summary
from romer_aihwkit.devices import load_device_config
from romer_aihwkit.evaluation.diagnosis_report import write_diagnosis
from romer_aihwkit.experiments.diagnose import _convert, _device_for, _setups, diagnose, nonidealities_of


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(3, 96, (4, 24), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def plain(blocks):
    return diagnose(tiny_model("olmoe"), "pcm", blocks, seeds=2, batch_size=4)


@pytest.fixture(scope="module")
def stressed(blocks):
    return diagnose(tiny_model("olmoe"), "pcm", blocks, seeds=2, batch_size=4, stress="outliers:3x50")


def test_nonidealities_per_device():
    assert nonidealities_of(load_device_config("pcm")) == ["programming", "drift", "read", "periphery"]
    assert nonidealities_of(load_device_config("rram-wan2022")) == ["programming", "periphery", "mvm-read"]
    assert nonidealities_of(load_device_config("aihwkit-standard")) == [
        "programming", "drift", "read", "periphery", "mvm-read", "ir-drop"]
    assert nonidealities_of(load_device_config("ideal")) == []


def test_toggles_switch_components_and_device_fields():
    model = tiny_model("qwen2_moe")
    components = ["router", "expert", "shared_expert"]
    setups = {(s.kind, s.component, s.nonideality): s for s in _setups(components, ["programming", "periphery"])}
    config = load_device_config("pcm")
    counts = analog_summary(_convert(model, config, setups[("alone", "router", "all")].analog, components, False))
    assert counts["router"] == 2 and counts["expert"] == 0 and counts["shared_expert"] == 0
    counts = analog_summary(_convert(model, config, setups[("off", "expert", "all")].analog, components, False))
    assert counts["router"] == 2 and counts["expert"] == 0 and counts["shared_expert"] > 0
    counts = analog_summary(_convert(model, config, setups[("alone", "shared_expert", "all")].analog, components, False))
    assert counts["router"] == 0 and counts["expert"] == 0 and counts["shared_expert"] > 0
    dev = _device_for(config, setups[("alone", "all", "programming")].on, ["programming", "periphery"])
    assert dev.prog_noise_scale == 1.0 and dev.dac_bits is None and dev.adc_bits is None and dev.out_noise == 0.0
    dev = _device_for(config, setups[("off", "all", "programming")].on, ["programming", "periphery"])
    assert dev.prog_noise_scale == 0.0 and dev.dac_bits == 8 and dev.out_noise == 0.04


def test_budget_rows_and_pairing(plain):
    rows = {(r["kind"], r["component"], r["nonideality"]): r for r in plain.budget}
    assert set(rows) == {("full", "all", "all"), ("floor", "all", "none"),
                         *(("alone", c, "all") for c in ("router", "expert")),
                         *(("off", c, "all") for c in ("router", "expert")),
                         *(("alone", "all", n) for n in ("programming", "drift", "read", "periphery")),
                         *(("off", "all", n) for n in ("programming", "drift", "read", "periphery"))}
    full = rows[("full", "all", "all")]
    assert full["removed"] is None and full["ppl"]["mean"] != pytest.approx(plain.digital_ppl, rel=1e-6)
    # with every modelled non-ideality off the tiles reproduce the digital model
    assert rows[("floor", "all", "none")]["ppl"]["mean"] == pytest.approx(plain.digital_ppl, rel=1e-3)
    off = rows[("off", "all", "programming")]
    diffs = [full["per_seed"][s] - off["per_seed"][s] for s in off["per_seed"]]
    assert off["removed"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    # `removed` is paired: its interval is that of the per-chip differences, for every part, not an unpaired one
    from romer_aihwkit.evaluation import mean_std_ci

    for r in plain.budget:
        if r["kind"] == "full":
            continue
        paired = [full["per_seed"][s] - r["per_seed"][s] for s in r["per_seed"]]
        assert r["removed"]["ci95"] == pytest.approx(mean_std_ci(paired)["ci95"], rel=1e-9, abs=1e-12), r["kind"]
        assert r["delta_ppl"]["ci95"] == pytest.approx(
            mean_std_ci([p - plain.digital_ppl for p in r["per_seed"].values()])["ci95"], rel=1e-9, abs=1e-12)
    for r in plain.budget:
        assert r["delta_ppl"]["mean"] == pytest.approx(r["ppl"]["mean"] - plain.digital_ppl)


def test_layer_statistics_see_the_stress(plain, stressed):
    assert [x["layer"] for x in plain.layers] == [0, 1]
    for before, after in zip(plain.layers, stressed.layers):
        assert before["outlier_channels"] == 0 and after["outlier_channels"] == 3
        assert after["act_crest"] > 1.5 * before["act_crest"]  # bounded by sqrt(32) at hidden 32
        assert after["router_logit_error"] > before["router_logit_error"]
        assert 0.0 <= after["router_error_per_token_share"] <= 1.0
        assert 0.0 <= after["load_shift"] <= 1.0 and 0.0 <= after["router_fidelity"] <= 1.0
    # function-preserving: the same digital model
    assert stressed.digital_ppl == pytest.approx(plain.digital_ppl, rel=1e-4)
    assert stressed.settings["stress"] == "outliers:3x50" and stressed.settings["stress_channels"]
    assert any("Outlier channels" in line for line in stressed.reading)


def test_outputs(plain, tmp_path):
    plain.settings["model"] = "tiny-olmoe"
    files = write_diagnosis(plain, tmp_path)
    assert [f.name for f in files] == ["diagnosis.json", "report.md", "layers_heatmap.png", "budget.png"]
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert {"component", "nonideality", "ppl", "delta_ppl"} <= set(data["budget"][0]) and len(data["layers"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "stress none" in report and "## Error budget" in report
    # the reading names a dominant effect exactly when there is a cost to attribute (on this tiny
    # random model the pcm cost is ~0.001 ppl, of either sign depending on the chip instances)
    cost = next(r for r in plain.budget if r["kind"] == "full")["delta_ppl"]["mean"]
    assert ("Dominant" in report) == (cost > 0) and ("No measurable cost" in report) == (not cost > 0)
    assert (tmp_path / "layers_heatmap.png").read_bytes().startswith(b"\x89PNG")


def test_cli(tmp_path):
    from test_runner import make_tiny_model_folder
    from typer.testing import CliRunner

    from romer_aihwkit.cli import app

    tiny = make_tiny_model_folder(tmp_path / "m")
    runner = CliRunner()
    args = ["diagnose", "--model", tiny, "--device", "gaussian-5", "--seeds", "2", "--seq-len", "24",
            "--eval-blocks", "2", "--calib-blocks", "2", "--out", str(tmp_path / "d")]
    result = runner.invoke(app, [*args, "--calib-text", "bundled", "--stress", "heavy-weights:2x10"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert data["settings"]["nonidealities"] == ["programming"]  # the gaussian presets have ideal periphery
    assert data["settings"]["statistics_on"] == "calibration blocks" and data["settings"]["model"] == tiny
    assert "stress heavy-weights:2x10" in (tmp_path / "d" / "report.md").read_text()
    bad = runner.invoke(app, [*args, "--stress", "outliers:3x0.5"])
    assert bad.exit_code == 2 and "scale must be in" in bad.stderr
