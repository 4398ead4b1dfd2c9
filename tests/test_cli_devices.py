"""The `romer-aihwkit devices` command and the CLI's user-error convention."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from romer_aihwkit.cli import app
from romer_aihwkit.devices import list_device_configs

runner = CliRunner()


def test_table_lists_every_preset():
    result = runner.invoke(app, ["devices"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    for name in list_device_configs():
        assert name in result.output


def test_json_lists_every_preset():
    result = runner.invoke(app, ["devices", "--json"])
    assert result.exit_code == 0
    names = [c["name"] for c in json.loads(result.stdout)]
    assert names == list_device_configs()


def test_show_preset_and_file(tmp_path):
    result = runner.invoke(app, ["devices", "show", "pcm"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "PCMLikeNoiseModel" in result.output and "Not modelled" in result.output
    f = tmp_path / "mine.yaml"
    f.write_text("extends: pcm\nout_noise: 0.1\n")
    result = runner.invoke(app, ["devices", "--show", str(f), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["out_noise"] == 0.1 and data["modelled"] and data["not_modelled"]


def test_bad_preset_is_a_one_line_error():
    result = runner.invoke(app, ["devices", "show", "no-such-chip"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert "no-such-chip" in result.stderr and "pcm" in result.stderr


def test_bad_field_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("extends: pcm\nout_noise: loud\n")
    result = runner.invoke(app, ["devices", "show", str(f)])
    assert result.exit_code == 2
    assert "out_noise" in result.stderr and "bad.yaml" in result.stderr


def test_console_script_subprocess():
    proc = subprocess.run(
        [sys.executable, "-c", "from romer_aihwkit.cli import main; main()", "devices", "show",
         "missing.yaml"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing.yaml" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
