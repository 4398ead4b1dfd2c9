"""Inputs resolved once: pure settings, one resolve step, each device file parsed once, one drift-time meaning."""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.devices import clear_device_config_cache, load_device_config
from romer_aihwkit.devices import loading as device_loading
from romer_aihwkit.errors import InputError, UserError
from romer_aihwkit.experiments import CompareSettings, ResolvedSettings, chip_instances, planned_rows, resolve
from romer_aihwkit.experiments.settings import input_fingerprints

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


@pytest.fixture
def parses(monkeypatch):
    """Counts, per file name, how often a device-config file is parsed (the first file of a chain)."""
    counts: collections.Counter[str] = collections.Counter()
    real = device_loading._read_resolved

    def counting(path, stack, **kwargs):
        if not stack:
            counts[Path(path).name] += 1
        return real(path, stack, **kwargs)

    clear_device_config_cache()
    monkeypatch.setattr(device_loading, "_read_resolved", counting)
    yield counts
    clear_device_config_cache()


# ------------------------------------------------------------------ settings: frozen and pure
def test_settings_construction_reads_no_device_model_or_folder(parses, tmp_path):
    settings = CompareSettings(models=[str(tmp_path / "no-model")], devices=["no-such-device"], methods=["none"],
                               seeds=[0], tasks=["some-task"], task_include_path=str(tmp_path / "no-folder"))
    assert not parses
    with pytest.raises(InputError, match="unknown device config 'no-such-device'"):
        resolve(settings)


def test_settings_are_frozen_hashable_and_keep_lists_as_tuples():
    settings = CompareSettings(models=["m"], devices=["pcm"], methods=["none"], seeds=[0, 1], t_inference=[None, 60])
    assert settings.seeds == (0, 1) and settings.t_inference == (None, 60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seeds = (2,)  # type: ignore[misc]
    assert hash(settings) == hash(dataclasses.replace(settings))
    assert settings.to_dict()["seeds"] == [0, 1] and settings.to_dict()["t_inference"] == [None, 60]
    assert CompareSettings(models=("m",), devices=("pcm",), methods=("none",), seeds=(0, 1),
                           t_inference=(None, 60)).fingerprint() == settings.fingerprint()


@pytest.mark.parametrize("bad, match", [
    (dict(t_inference=[-1.0]), "t_inference must be None"),
    (dict(t_inference=["1h"]), "t_inference must be None"),
    (dict(seeds=[1, 1]), "seeds must be distinct"),
    (dict(devices="pcm"), "devices must be a list"),
    (dict(methods=["bogus"]), "valid methods"),
])
def test_settings_refuse_values_wrong_whatever_the_files_say(bad, match):
    with pytest.raises(InputError, match=match):
        CompareSettings(**{"models": ["m"], "methods": ["none"], **bad})


def _stored_settings():
    return [pytest.param(json.loads(path.read_text()), id=path.parent.name)
            for path in sorted(RESULTS.glob("*/settings.json"))]


@pytest.mark.parametrize("stored", _stored_settings())
def test_fingerprint_of_committed_results_is_unchanged(stored):
    """Resume recognises the committed folders: the same settings give the stored fingerprint."""
    from romer_aihwkit.experiments import list_methods
    from romer_aihwkit.experiments.settings import _OPTIONAL_DEFAULTS

    values = {f.name: stored[f.name] for f in dataclasses.fields(CompareSettings) if f.name in stored}
    values.update({k: v for k, v in _OPTIONAL_DEFAULTS.items() if k not in stored})  # written before they existed
    values["methods"] = [m for m in values["methods"] if m in list_methods()] or ["none"]  # not in the fingerprint
    assert CompareSettings(**values).fingerprint() == stored["fingerprint"]


@pytest.mark.parametrize("folder", ["regimes-none", "out-of-domain", "cap-sweep"])
def test_device_fingerprints_of_current_results_are_unchanged(folder):
    """Device content hashes (settings.json ``inputs``) of folders computed with today's presets are what
    the resolved devices give (older folders were computed with presets that changed since)."""
    from romer_aihwkit.analog.fingerprint import device_fingerprint

    stored = json.loads((RESULTS / folder / "settings.json").read_text())
    resolved = resolve(CompareSettings(models=["m"], devices=stored["devices"], methods=["none"], controls=False))
    for device in stored["devices"]:
        assert resolved.devices[device].fingerprint == stored["inputs"][f"device {device}"] == device_fingerprint(device)


# ------------------------------------------------------------------ one resolve step
def test_resolve_fills_each_devices_default_drift_time_once(parses):
    settings = CompareSettings(models=["m"], devices=["pcm", "rram-wan2022"], methods=["none", "romer"],
                               seeds=[0, 1], t_inference=[None])
    resolved = resolve(settings)
    assert isinstance(resolved, ResolvedSettings) and resolve(resolved) is resolved
    assert resolved.devices["pcm"].t_inference == (3600.0,)
    assert resolved.devices["rram-wan2022"].t_inference == (86400.0,)
    assert resolved.control is not None and resolved.control.t_inference == (load_device_config("ideal").t_inference,)
    assert resolved.device("pcm") is load_device_config("pcm")
    assert chip_instances(resolved) == [("m", "pcm", 3600.0, 0), ("m", "pcm", 3600.0, 1),
                                        ("m", "rram-wan2022", 86400.0, 0), ("m", "rram-wan2022", 86400.0, 1)]
    assert all(isinstance(t, float) for _, _, t, _ in chip_instances(resolved))
    planned_rows(resolved)
    assert input_fingerprints(resolved)["device pcm"] == resolved.devices["pcm"].fingerprint
    assert dict(parses) == {"pcm.yaml": 1, "rram-wan2022.yaml": 1, "ideal.yaml": 1}
    with pytest.raises(TypeError):
        resolved.devices["x"] = resolved.devices["pcm"]  # type: ignore[index]


def test_resolve_device_takes_a_config_and_fills_its_default():
    from romer_aihwkit.experiments.settings import resolve_device

    resolved = resolve_device(load_device_config("rram-wan2022"), [None, 1.0])
    assert resolved.name == "rram-wan2022" and resolved.t_inference == (86400.0, 1.0)
    assert resolve_device("pcm").t_inference == (3600.0,)


def test_explicit_zero_is_a_drift_of_zero_seconds_not_the_default():
    resolved = resolve(CompareSettings(models=["m"], methods=["none"], seeds=[0], t_inference=[0.0, None]))
    assert resolved.devices["pcm"].t_inference == (0.0, 3600.0)


@pytest.mark.parametrize("times, match", [
    ([None, 3600.0], "drift time 3600 s twice"),
    ([60.0], "rram-wan2022"),
])
def test_resolve_refuses_drift_times_the_device_does_not_take(times, match):
    device = "pcm" if match != "rram-wan2022" else "rram-wan2022"
    settings = CompareSettings(models=["m"], devices=[device], methods=["none"], seeds=[0], t_inference=times)
    with pytest.raises(InputError, match=match):
        resolve(settings)


def test_resolve_names_the_extra_to_install_for_tasks(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    settings = CompareSettings(models=["m"], methods=["none"], seeds=[0], tasks=["shakespeare_line_end"])
    with pytest.raises(UserError, match=r"\[eval\]"):
        resolve(settings)


def test_resolve_sees_two_spellings_of_one_device_file(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("extends: pcm\n")
    monkeypatch.chdir(tmp_path)
    settings = CompareSettings(models=["m"], devices=["mine.yaml", str(tmp_path / "mine.yaml")], methods=["none"])
    with pytest.raises(InputError, match="more than once"):
        resolve(settings)


# ------------------------------------------------------------------ each device file parsed once per process
def test_a_loaded_file_is_parsed_once_and_reread_when_it_or_its_base_changes(parses, tmp_path):
    (tmp_path / "base.yaml").write_text("extends: pcm\nprog_noise_scale: 0.5\n")
    (tmp_path / "chip.yaml").write_text("extends: base.yaml\ndrift_scale: 0.5\n")
    first = load_device_config(tmp_path / "chip.yaml")
    assert load_device_config(str(tmp_path / "chip.yaml")) is first and parses["chip.yaml"] == 1
    assert first.name == "chip" and first.prog_noise_scale == 0.5
    (tmp_path / "base.yaml").write_text("extends: pcm\nprog_noise_scale: 0.25\n")
    assert load_device_config(tmp_path / "chip.yaml").prog_noise_scale == 0.25 and parses["chip.yaml"] == 2
    (tmp_path / "chip.yaml").write_text("extends: base.yaml\ndrift_scale: 0.75\n")
    assert load_device_config(tmp_path / "chip.yaml").drift_scale == 0.75 and parses["chip.yaml"] == 3
    (tmp_path / "other.yaml").symlink_to(tmp_path / "chip.yaml")
    assert load_device_config(tmp_path / "other.yaml").name == "other"  # named after the file it was opened by


def test_a_broken_file_is_not_cached(parses, tmp_path):
    from romer_aihwkit.errors import DeviceConfigError

    path = tmp_path / "chip.yaml"
    path.write_text("extends: pcm\nprog_noise_scale: -1\n")
    for _ in range(2):
        with pytest.raises(DeviceConfigError):
            load_device_config(path)
    assert parses["chip.yaml"] == 2


def test_a_tiny_compare_run_parses_each_device_file_once(parses, tmp_path):
    """The CLI path: settings, resume check, planned rows, fingerprints, conversions and controls."""
    from test_runner import make_tiny_model_folder
    from typer.testing import CliRunner

    from romer_aihwkit.cli import app

    tiny = make_tiny_model_folder(tmp_path / "tiny")
    parses.clear()
    result = CliRunner().invoke(app, [
        "compare", "--model", tiny, "--devices", "pcm", "--methods", "none,romer", "--seeds", "2", "--seq-len", "32",
        "--eval-blocks", "2", "--calib-blocks", "2", "--batch-size", "4", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert dict(parses) == {"pcm.yaml": 1, "ideal.yaml": 1}  # ideal: romer's noise-free control


# ------------------------------------------------------------------ one meaning of t_inference=None
@pytest.fixture
def converted():
    model = tiny_model("olmoe")
    ra.convert_to_analog_moe(model, "pcm")
    return model


def _logits(model):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.arange(12).reshape(2, 6)).logits


def test_none_is_the_devices_default_at_every_analog_entry_point(converted):
    default = converted.analog_state.device_config.t_inference
    converted.program_analog_weights(seed=3, t_inference=None)
    assert converted.analog_state.t_inference == default
    one_call = _logits(converted)
    converted.program_analog_weights(seed=3)  # omitted: programmed, not drifted
    assert converted.analog_state.t_inference is None
    converted.drift_analog_weights(None)
    assert converted.analog_state.t_inference == default
    assert torch.equal(_logits(converted), one_call)
    converted.program_analog_weights(seed=3, t_inference=default)
    assert torch.equal(_logits(converted), one_call)


def test_zero_is_a_drift_of_zero_seconds_not_an_undrifted_chip(converted):
    from romer_aihwkit.analog.programming import NOT_DRIFTED

    converted.program_analog_weights(seed=3, t_inference=NOT_DRIFTED)
    undrifted = _logits(converted)
    converted.program_analog_weights(seed=3, t_inference=0.0)
    assert converted.analog_state.t_inference == 0.0
    assert not torch.equal(_logits(converted), undrifted)  # pcm: read noise is drawn at 0 s too


def test_diagnose_takes_none_as_the_devices_default():
    blocks = torch.randint(3, 96, (2, 8))  # the tiny models have 96 tokens
    report = ra.diagnose(tiny_model("olmoe"), "ideal", blocks, seeds=1, t_inference=None, batch_size=2)
    assert report.settings["t_inference"] == load_device_config("ideal").t_inference
