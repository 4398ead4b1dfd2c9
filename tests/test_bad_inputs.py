"""Hostile inputs: every bad input gets a clear error, no silent wrong result, nothing lost.

A matrix over the CLI, device YAML files, the Python API, saved artifacts and concurrent runs. Each
case asserts a non-zero exit (CLI) or the package's own error type (API), a message naming the
file / option / value, no traceback, and that nothing already there changed or was lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_runner import make_tiny_model_folder
from tiny_models import mix_experts, tiny_model
from torch import nn
from typer.testing import CliRunner

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogExperts, find_routers
from romer_aihwkit.cli import app
from romer_aihwkit.devices import MAX_YAML_BYTES, load_device_config
from romer_aihwkit.errors import (
    ArtifactError,
    DeviceConfigError,
    FingerprintMismatchError,
    InputError,
    UnsafeFileError,
    UserError,
)
from romer_aihwkit.experiments.runner import LOCK_FILE, CompareSettings, ResultsLockedError, run_comparison

runner = CliRunner()
TINY_RUN = ["--methods", "none", "--seeds", "1", "--seq-len", "16", "--eval-blocks", "1", "--calib-blocks", "1",
            "--batch-size", "1"]
MAX_MESSAGE = 600  # no error echoes a whole file


def one_line_error(result, *fragments):
    """A CLI user error: exit 2, no traceback, one 'Error:' line naming every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("Warning", "Loading weights"))]  # transformers' progress
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert len(lines[0]) < MAX_MESSAGE, lines[0]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-bad-inputs"))


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory):
    from romer_aihwkit.data import read_bundled_text

    path = tmp_path_factory.mktemp("texts") / "eval.txt"
    path.write_text(read_bundled_text("test")[:6000], encoding="utf-8")
    return path


def fresh_run(tiny, eval_text, tmp_path):
    """A finished one-row comparison whose inputs are a device YAML file and an eval text file."""
    device = tmp_path / "dev.yaml"
    device.write_text("extends: pcm\nout_noise: 0.05\n")
    text = tmp_path / "eval.txt"
    shutil.copy(eval_text, text)
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, "--devices", str(device), "--eval-text", str(text), *TINY_RUN,
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp_path, out, args


# ------------------------------------------------------------------------------------------ device YAML
YAML_CASES = {
    "huge_prog_noise_scale": ("extends: pcm\nprog_noise_scale: 1.0e+308\n", ["prog_noise_scale", "[0, 10]"]),
    "huge_out_noise": ("extends: pcm\nout_noise: 1.0e+300\n", ["out_noise", "[0, 1]"]),
    "unsigned_exponent": ("extends: pcm\nprog_noise_scale: 1.0e308\n", ["prog_noise_scale", "1.0e+308"]),
    "no_dot_exponent": ("extends: pcm\nt_inference: 1e5\n", ["t_inference", "1.0e+5"]),
    "g_max_out_of_range": ("extends: pcm\ng_max: 1.0e+9\n", ["g_max", "uS"]),
    "g_max_nan": ("extends: pcm\ng_max: .nan\n", ["g_max", "finite"]),
    "negative_t_inference": ("extends: pcm\nt_inference: -1.0\n", ["t_inference"]),
    "t_inference_beyond_10_years": ("extends: pcm\nt_inference: 1.0e+12\n", ["t_inference", "10 years"]),
    "noise_level_500_percent": ("extends: gaussian-5\nnoise_level: 5.0\n", ["noise_level"]),
    "dac_bits_30": ("extends: pcm\ndac_bits: 30\n", ["dac_bits"]),
    "huge_tiles": ("extends: pcm\nmax_input_size: 1000000000\n", ["max_input_size"]),
    "input_range_huge": ("extends: pcm\ninput_range: {init_value: 1.0e+9}\n", ["input_range.init_value"]),
    "allowed_t_huge": ("extends: pcm\nallowed_t_inference: [1.0e+20]\n", ["allowed_t_inference"]),
    "billion_laughs": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                       ["anchors"]),
    "deep_nesting": ("extends: pcm\ninput_range: " + "[" * 50 + "]" * 50 + "\n", ["nested deeper"]),
    "python_tag": ("extends: pcm\nname: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    "syntax_error": ("extends: pcm\nout_noise: [0.1\n", ["not valid YAML", "line"]),
    "not_a_mapping": ("- " + "x" * 5000 + "\n", ["mapping of fields"]),
    "unknown_huge_field": ("extends: pcm\n" + "y" * 1000 + ": 1\n", ["unknown field"]),
    "extends_absolute": ("extends: /etc/passwd\n", ["extends", "absolute"]),
    "extends_outside_folder": ("extends: ../outside.yaml\n", ["extends", "outside"]),
    "extends_not_yaml": ("extends: ./notes.txt\n", ["extends", ".yaml"]),
    "extends_unknown_preset": ("extends: pcmm\n", ["extends", "pcmm", "pcm"]),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_bad_device_yaml(tmp_path, name):
    text, fragments = YAML_CASES[name]
    sub = tmp_path / "configs"
    sub.mkdir()
    (tmp_path / "outside.yaml").write_text("extends: pcm\n")
    (sub / "notes.txt").write_text("extends: pcm\n")
    path = sub / "dev.yaml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError) as info:
        load_device_config(path)
    message = str(info.value)
    assert isinstance(info.value, UserError) and str(path) in message and len(message) < MAX_MESSAGE, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_huge_yaml_file_refused_before_parsing(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000 + "]" * 100_000)  # 100,000-deep nesting
    with pytest.raises(DeviceConfigError, match=f"at most {MAX_YAML_BYTES} bytes") as info:
        load_device_config(path)
    assert str(path) in str(info.value)


def test_non_utf8_yaml_names_file(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("extends: pcm\ndescription: caf\xe9\n".encode("latin-1"))
    with pytest.raises(DeviceConfigError, match="UTF-8") as info:
        load_device_config(path)
    assert str(path) in str(info.value)


def test_every_preset_is_inside_its_ranges():
    from romer_aihwkit.devices import list_device_configs

    for name in list_device_configs():
        cfg = load_device_config(name)
        assert cfg.replace() == cfg  # re-validation passes


@pytest.mark.parametrize("yaml_text, fragment", [
    ("extends: pcm\nprog_noise_scale: 1.0e308\n", "1.0e+308"),
    ("extends: /etc/passwd\n", "absolute"),
])
def test_bad_device_yaml_cli(tmp_path, yaml_text, fragment):
    path = tmp_path / "dev.yaml"
    path.write_text(yaml_text)
    one_line_error(runner.invoke(app, ["devices", "show", str(path)]), fragment, str(path))


def test_devices_show_lists_ranges_and_deviations():
    result = runner.invoke(app, ["devices", "show", "rram-wan2022", "--json"])
    data = json.loads(result.stdout)
    assert data["ranges"]["prog_noise_scale"] == {"min": 0.0, "max": 10.0, "unit": "x the model's noise"}
    assert any("g_max 40" in d and "25" in d for d in data["aihwkit_deviations"])
    pcm = json.loads(runner.invoke(app, ["devices", "show", "pcm", "--json"]).stdout)["aihwkit_deviations"]
    assert any("512 output columns" in d for d in pcm) and any("learn_out_scaling" in d for d in pcm)


# ------------------------------------------------------------------------------------------ CLI options
@pytest.mark.parametrize("args, fragments", [
    (["--seeds", "100000000"], ["--seeds", "1000"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--first-seed", "-1"], ["--first-seed"]),
    (["--first-seed", "2147483647", "--seeds", "2"], ["--first-seed"]),
    (["--seq-len", "0"], ["--seq-len"]),
    (["--eval-blocks", "99999999999"], ["--eval-blocks"]),
    (["--t-inference", "1e400"], ["t_inference"]),
    (["--t-inference", "20y"], ["t_inference", "10 years"]),
    (["--methods", "bogus"], ["bogus", "valid methods"]),
    (["--devices", "pcmm"], ["pcmm", "pcm"]),
])
def test_bad_option_values(tiny, tmp_path, args, fragments):
    out = tmp_path / "x"
    result = runner.invoke(app, ["compare", "--model", tiny, *TINY_RUN, *args, "--out", str(out)])
    one_line_error(result, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("content, fragment", [
    (bytes(range(256)) * 8, "UTF-8"),
    (b"To be or not\x00 to be" * 100, "binary"),
    ("caf\xe9 ".encode("latin-1") * 500, "UTF-8"),
])
@pytest.mark.parametrize("option", ["--eval-text", "--calib-text"])
def test_binary_or_non_utf8_text_names_file_and_option(tiny, tmp_path, content, fragment, option):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    result = runner.invoke(app, ["compare", "--model", tiny, *TINY_RUN, option, str(path),
                                 "--out", str(tmp_path / "x")])
    one_line_error(result, fragment, str(path), option)


def test_calibrate_command_bad_text_and_romer_options(tiny, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe" * 1000)
    result = runner.invoke(app, ["calibrate", "--model", tiny, "--calib-text", str(path), "--out", str(tmp_path / "c")])
    one_line_error(result, "--calib-text", str(path))
    one_line_error(runner.invoke(app, ["calibrate", "--model", tiny, "--tau", "2", "--out", str(tmp_path / "c")]),
                   "--tau", "tau")
    one_line_error(runner.invoke(app, ["calibrate", "--model", tiny, "--seed", "-1", "--out", str(tmp_path / "c")]),
                   "--seed")
    one_line_error(runner.invoke(app, ["convert", "--model", tiny, "--seed", str(2**40)]), "--seed")


class _Payload:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_model_folder_with_pickle_is_refused_without_unpickling(tiny, tmp_path):
    folder = tmp_path / "evil-model"
    folder.mkdir()
    shutil.copy(Path(tiny) / "config.json", folder / "config.json")
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Payload(str(marker))}, f)
    result = runner.invoke(app, ["compare", "--model", str(folder), *TINY_RUN, "--out", str(tmp_path / "x")])
    one_line_error(result, "pickle", str(folder), "pytorch_model.bin")
    with pytest.raises(UnsafeFileError):
        ra.load_model(folder)
    assert not marker.exists()


def test_out_is_a_file(tiny, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    one_line_error(runner.invoke(app, ["compare", "--model", tiny, *TINY_RUN, "--out", str(out)]), "--out")
    assert out.read_text() == "keep me"


# ------------------------------------------------------------------------------------------ results folders
def test_truncated_settings_json_is_named_and_recoverable(tiny, eval_text, tmp_path):
    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    settings = out / "settings.json"
    settings.write_text(settings.read_text()[:40])
    rows_before = (out / "rows.jsonl").read_bytes()
    one_line_error(runner.invoke(app, args), str(settings), "--force")
    assert (out / "rows.jsonl").read_bytes() == rows_before  # nothing lost
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert json.loads(settings.read_text())["fingerprint"]


@pytest.mark.parametrize("line", ['{"hello": "world"}', "not json at all", "[1, 2, 3]",
                                  '{"model": "m", "device": "d", "method": "none", "t_inference": "x", '
                                  '"seed": 0, "ppl": 1}'])
def test_foreign_row_line_is_named_with_line_number(tiny, eval_text, tmp_path, line):
    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    rows = out / "rows.jsonl"
    rows.write_text(line + "\n" + rows.read_text())
    before = rows.read_bytes()
    one_line_error(runner.invoke(app, args), str(rows), "line 1", "--force")
    assert rows.read_bytes() == before


def test_changed_device_yaml_content_is_not_resumed(tiny, eval_text, tmp_path):
    work, out, args = fresh_run(tiny, eval_text, tmp_path)
    (work / "dev.yaml").write_text("extends: pcm\nout_noise: 0.2\n")  # same path, other device
    before = (out / "rows.jsonl").read_bytes()
    one_line_error(runner.invoke(app, args), "other contents of device", "--force")
    assert (out / "rows.jsonl").read_bytes() == before
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "rows.jsonl").read_bytes() != before  # recomputed on the new device


def test_changed_eval_text_content_is_not_resumed(tiny, eval_text, tmp_path):
    work, out, args = fresh_run(tiny, eval_text, tmp_path)
    text = work / "eval.txt"
    text.write_text(text.read_text()[::-1])  # same path, other text
    before = (out / "rows.jsonl").read_bytes()
    one_line_error(runner.invoke(app, args), "other contents of eval_text", "--force")
    assert (out / "rows.jsonl").read_bytes() == before


def test_unchanged_inputs_resume(tiny, eval_text, tmp_path):
    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    before = (out / "rows.jsonl").read_bytes()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "rows.jsonl").read_bytes() == before  # resumed: nothing recomputed


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = textwrap.dedent("""
        import sys, time
        from filelock import FileLock
        lock = FileLock(sys.argv[1]); lock.acquire()
        print("locked", flush=True); time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_one_out_is_refused_while_locked(tiny, eval_text, tmp_path):
    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_FILE}
    holder = _hold_lock(out)
    try:
        one_line_error(runner.invoke(app, [*args, "--force"]), "in use by another", str(out))
        settings = CompareSettings(models=["x"], methods=["none"], seeds=[0])
        with pytest.raises(ResultsLockedError):
            run_comparison(settings, out)
    finally:
        holder.kill()
        holder.wait()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_FILE}
    assert after == before  # the refused runs touched nothing
    assert runner.invoke(app, args).exit_code == 0  # a killed holder leaves no stale lock


def test_output_files_follow_umask(tiny, eval_text, tmp_path):
    _, out, _ = fresh_run(tiny, eval_text, tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("rows.jsonl", "settings.json", "results.json", "results.csv", "report.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# ------------------------------------------------------------------------------------------ Python API
@pytest.fixture(scope="module")
def olmoe_pcm():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    model.program_analog_weights(seed=2)
    model.drift_analog_weights(3600.0)
    return model


def calib_tokens(n=16, length=24, seed=5):
    return torch.randint(3, 96, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bad_id", [96, 10_000, -1])
def test_token_id_outside_vocabulary(olmoe_pcm, bad_id):
    tokens = calib_tokens(2)
    tokens[1, 3] = bad_id
    before = snapshot(olmoe_pcm)
    with pytest.raises(InputError, match=f"token id {bad_id}.*0..95"):
        ra.perplexity(olmoe_pcm, tokens, progress=False)
    with pytest.raises(InputError, match=f"token id {bad_id}"):
        ra.calibrate(olmoe_pcm, tokens, callbacks=[ra.Romer()], progress=False)
    with pytest.raises(InputError, match=f"token id {bad_id}"):
        ra.routing_stats(olmoe_pcm, tokens, progress=False)
    assert_same(snapshot(olmoe_pcm), before)


@pytest.mark.parametrize("content, fragment", [(b"\x89PNG\r\n\x1a\n" + bytes(200), "binary"),
                                               (b"\xc3\x28" * 50, "UTF-8")])
def test_text_blocks_binary_file(tmp_path, content, fragment):
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as info:
        ra.text_blocks(str(path), seq_len=8)
    assert str(path) in str(info.value)


def test_text_blocks_corrupted_gzip(tmp_path):
    path = tmp_path / "x.txt.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError) as info:
        ra.text_blocks(str(path), seq_len=8)
    assert str(path) in str(info.value)


def test_compare_settings_bounds():
    with pytest.raises(InputError, match="at most 1000"):
        CompareSettings(models=["x"], seeds=list(range(1001)))
    with pytest.raises(InputError, match="10 years"):
        load_device_config("pcm").check_t_inference(float("inf"))


# ------------------------------------------------------------------------------------------ artifacts
def snapshot(model):
    routers = [{k: getattr(r, k).detach().clone() for k in ("logit_scale", "logit_bias", "expert_mask")}
               for r in find_routers(model)]
    replicas = [m.replica_of.clone() for m in model.modules() if isinstance(m, AnalogExperts)]
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(calib_tokens(1, 8, seed=3)).logits
    return routers, replicas, logits


def assert_same(a, b):
    for ra_, rb in zip(a[0], b[0]):
        for k in ra_:
            assert torch.equal(ra_[k], rb[k]), k
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert torch.equal(a[2], b[2])


@pytest.fixture(scope="module")
def saved_calibration(olmoe_pcm, tmp_path_factory):
    """A ROMER calibration with replicas, installed on ``olmoe_pcm`` and saved."""
    report = ra.calibrate(olmoe_pcm, calib_tokens(), callbacks=[ra.Romer(tau=0.9)], progress=False)
    assert report["romer"].replaced_experts > 0
    path = tmp_path_factory.mktemp("calib") / "calib"
    ra.save_calibration(olmoe_pcm, path)
    return path


def _edit_tensors(src: Path, dst: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src.with_suffix(".safetensors")))
    edit(tensors)
    save_file(tensors, str(dst.with_suffix(".safetensors")), metadata={"format": "romer-aihwkit-calibration/2"})
    meta = json.loads(src.with_suffix(".json").read_text())  # a consistent pair: the tensors' checks must refuse it
    meta["tensors_sha256"] = hashlib.sha256(dst.with_suffix(".safetensors").read_bytes()).hexdigest()
    dst.with_suffix(".json").write_text(json.dumps(meta))


def _replica_99(t):
    t["0.replica_of"][0] = 99


TENSOR_EDITS = {
    "missing_tensor": (lambda t: t.pop("1.logit_bias"), "missing tensor"),
    "wrong_shape": (lambda t: t.__setitem__("0.logit_scale", torch.ones(5)), "shape"),
    "wrong_dtype": (lambda t: t.__setitem__("0.logit_scale", torch.ones(8, dtype=torch.float64)), "float32"),
    "replica_of_99": (_replica_99, "replica_of"),
    "nan_scale": (lambda t: t["0.logit_scale"].__setitem__(0, float("nan")), "NaN"),
    "mask_value_7": (lambda t: t["0.expert_mask"].__setitem__(0, 7), "0/1"),
    "extra_tensor": (lambda t: t.__setitem__("9.logit_bias", torch.zeros(8)), "unexpected"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_EDITS))
def test_bad_calibration_tensors_change_nothing(olmoe_pcm, saved_calibration, tmp_path, case):
    edit, fragment = TENSOR_EDITS[case]
    bad = tmp_path / "bad"
    _edit_tensors(saved_calibration, bad, edit)
    before = snapshot(olmoe_pcm)
    with pytest.raises(ArtifactError, match=fragment) as info:
        ra.load_calibration(olmoe_pcm, bad)
    assert str(bad) in str(info.value)
    assert_same(snapshot(olmoe_pcm), before)


@pytest.mark.parametrize("damage", ["truncate_tensors", "truncate_json", "garbage_json", "latin1_json"])
def test_damaged_calibration_files_named(olmoe_pcm, saved_calibration, tmp_path, damage):
    bad = tmp_path / "bad"
    for suffix in (".safetensors", ".json"):
        shutil.copy(saved_calibration.with_suffix(suffix), bad.with_suffix(suffix))
    target = bad.with_suffix(".safetensors" if damage == "truncate_tensors" else ".json")
    data = target.read_bytes()
    target.write_bytes({"truncate_tensors": data[: len(data) // 2], "truncate_json": data[: len(data) // 2],
                        "garbage_json": b"{,}", "latin1_json": b'{"format": "caf\xe9"}'}[damage])
    before = snapshot(olmoe_pcm)
    with pytest.raises(ArtifactError) as info:
        ra.load_calibration(olmoe_pcm, bad)
    assert str(target) in str(info.value)
    assert_same(snapshot(olmoe_pcm), before)


def _converted(family="olmoe", device="pcm", seed=2, t=3600.0, **kwargs):
    model = ra.convert_to_analog_moe(tiny_model(family, seed=kwargs.pop("model_seed", 0)), device, **kwargs)
    model.program_analog_weights(seed=seed)
    model.drift_analog_weights(t)
    return model


@pytest.mark.parametrize("other, field", [
    (dict(seed=3), "seed"),
    (dict(device="gaussian-5"), "device"),
    (dict(model_seed=1), "weights"),
    (dict(analog_router=False), "analog"),
    (dict(t=86400.0), "t_inference"),
])
def test_calibration_of_another_chip_instance_is_refused(saved_calibration, other, field):
    model = _converted(**other)
    before = snapshot(model)
    with pytest.raises(FingerprintMismatchError, match=field) as info:
        ra.load_calibration(model, saved_calibration)
    assert str(saved_calibration.with_suffix(".json")) in str(info.value)
    assert_same(snapshot(model), before)


def test_calibration_onto_another_architecture_is_refused(saved_calibration):
    model = _converted("qwen2_moe")
    with pytest.raises(ArtifactError, match="MoE layers|architecture"):
        ra.load_calibration(model, saved_calibration)


def test_same_device_content_under_another_name_loads(saved_calibration, tmp_path):
    path = tmp_path / "renamed.yaml"
    path.write_text("extends: pcm\nname: renamed\ndescription: same physics\n")
    model = _converted(device=str(path))
    ra.load_calibration(model, saved_calibration)
    assert any(r.expert_mask.any() for r in find_routers(model))


def test_calibration_without_fingerprint_is_refused(olmoe_pcm, saved_calibration, tmp_path):
    bad = tmp_path / "old"
    shutil.copy(saved_calibration.with_suffix(".safetensors"), bad.with_suffix(".safetensors"))
    meta = json.loads(saved_calibration.with_suffix(".json").read_text())
    meta.pop("fingerprint")
    bad.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="no fingerprint"):
        ra.load_calibration(olmoe_pcm, bad)


def test_calibration_files_follow_umask(saved_calibration):
    mask = os.umask(0)
    os.umask(mask)
    for suffix in (".safetensors", ".json"):
        assert saved_calibration.with_suffix(suffix).stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------------------------------ correctness (a), (b)
class RemoteMoEGate(nn.Module):
    """DeepSeek-V2/V3 remote-code ``MoEGate``, routing exactly as ``modeling_deepseek.py`` does."""

    def __init__(self, weight, top_k, method, n_group, topk_group, norm, scaling, scoring, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.top_k, self.topk_method, self.n_group, self.topk_group = top_k, method, n_group, topk_group
        self.norm_topk_prob, self.routed_scaling_factor, self.scoring_func = norm, scaling, scoring
        if bias is not None:
            self.e_score_correction_bias = nn.Parameter(bias.clone())

    def forward(self, x):
        logits = nn.functional.linear(x.float(), self.weight.float())
        scores = logits.softmax(-1) if self.scoring_func == "softmax" else logits.sigmoid()
        n = x.shape[0]
        if self.topk_method == "greedy":
            weight, idx = torch.topk(scores, self.top_k, dim=-1, sorted=False)
        else:
            choice = scores + self.e_score_correction_bias if self.topk_method == "noaux_tc" else scores
            grouped = choice.view(n, self.n_group, -1)
            if self.topk_method == "noaux_tc":
                group_scores = grouped.topk(2, dim=-1)[0].sum(-1)
            else:
                group_scores = grouped.max(dim=-1).values
            group_idx = group_scores.topk(self.topk_group, dim=-1)[1]
            mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
            mask = mask.unsqueeze(-1).expand(n, self.n_group, grouped.shape[-1]).reshape(n, -1)
            tmp = choice.masked_fill(~mask.bool(), float("-inf") if self.topk_method != "noaux_tc" else 0.0)
            _, idx = torch.topk(tmp, self.top_k, dim=-1, sorted=False)
            weight = scores.gather(1, idx)
        if self.topk_method == "noaux_tc":
            if self.top_k > 1 and self.norm_topk_prob:
                weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
            weight = weight * self.routed_scaling_factor
        elif self.top_k > 1 and self.norm_topk_prob:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        else:
            weight = weight * self.routed_scaling_factor
        return idx, weight, None


class RemoteDeepseekMoE(nn.Module):
    """DeepSeek-V2/V3 remote-code ``DeepseekV2MoE`` layout: ``MoEGate`` + ModuleList experts + shared experts."""

    def __init__(self, block, gate):
        super().__init__()
        from tiny_models import LegacyExpert

        e = block.gate.weight.shape[0]
        self.gate = gate
        self.experts = nn.ModuleList(LegacyExpert(block.experts.gate_up_proj[i], block.experts.down_proj[i])
                                     for i in range(e))
        self.shared_experts = block.shared_experts

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.view(-1, h)
        idx, w, _ = self.gate(x)
        out = mix_experts(self.experts, x, idx, w)
        return (out + self.shared_experts(x)).view(b, s, h)


REMOTE_GATES = {
    "v3_noaux_tc": dict(method="noaux_tc", norm=True, scaling=2.5, scoring="sigmoid", bias=True),
    "v2_group_limited": dict(method="group_limited_greedy", norm=False, scaling=1.7, scoring="softmax"),
    "v2_greedy_norm": dict(method="greedy", norm=True, scaling=16.0, scoring="softmax"),
}


def _remote_deepseek(kind):
    model = tiny_model("deepseek_v3")
    g = torch.Generator().manual_seed(7)
    for layer in model.model.layers[1:]:
        block = layer.mlp
        opts = REMOTE_GATES[kind]
        bias = torch.randn(8, generator=g) * 0.3 if opts.get("bias") else None
        gate = RemoteMoEGate(block.gate.weight, 2, opts["method"], 4, 2, opts["norm"], opts["scaling"],
                             opts["scoring"], bias)
        layer.mlp = RemoteDeepseekMoE(block, gate)
    return model.eval()


@pytest.mark.parametrize("kind", sorted(REMOTE_GATES))
def test_remote_deepseek_gates_reproduce_digital_block_under_ideal(kind):
    digital = _remote_deepseek(kind)
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    block = digital.model.layers[1].mlp
    with torch.no_grad():
        expected = block(x)
    analog = ra.convert_to_analog_moe(_remote_deepseek(kind), "ideal")
    analog.program_analog_weights(seed=0)
    with torch.no_grad():
        got = analog.model.layers[1].mlp(x)
    rel = (got - expected).norm() / expected.norm()
    assert rel < 1e-4, float(rel)


@pytest.mark.parametrize("kind", sorted(REMOTE_GATES))
def test_remote_deepseek_gates_route_as_the_remote_code_in_bf16_under_ideal(kind):
    """The remote code computes the gate in float32 (hidden and weight cast up) even in a bf16 model: the
    analog router must too, so that on a noise-free chip every token picks the digital gate's experts."""
    from romer_aihwkit.analog import find_routers, trace_routing

    digital = _remote_deepseek(kind).to(torch.bfloat16)
    analog = ra.convert_to_analog_moe(_remote_deepseek(kind).to(torch.bfloat16), "ideal")
    analog.program_analog_weights(seed=0)
    assert all(r.spec.fp32_logits for r in find_routers(analog))
    tokens = torch.randint(3, 90, (16, 64), generator=torch.Generator().manual_seed(2))
    events = []
    with trace_routing(analog, events.append), torch.no_grad():
        analog(tokens)
    gates = {id(r): layer.mlp.gate for r, layer in zip(find_routers(analog), digital.model.layers[1:])}
    checked = 0
    for event in events:
        with torch.no_grad():
            idx, _, _ = gates[id(event.router)](event.hidden)
        assert torch.equal(event.selected.sort(-1).values, idx.sort(-1).values), kind
        checked += idx.shape[0]
    assert checked == len(gates) * 16 * 64 and gates


def test_remote_gate_with_unknown_topk_method_is_refused():
    model = _remote_deepseek("v2_group_limited")
    model.model.layers[1].mlp.gate.topk_method = "sinkhorn"
    with pytest.raises(ValueError, match="topk_method 'sinkhorn'"):
        ra.convert_to_analog_moe(model, "ideal")


def test_romer_keeps_every_unmasked_deepseek_v3_expert_reachable():
    """Group score = sum of the two best: a group must never keep exactly one unmasked expert."""
    from romer_aihwkit.adapters.routing import RoutingSpec
    from romer_aihwkit.calibration.romer import Romer

    spec = RoutingSpec(16, 2, "sigmoid", True, n_group=4, topk_group=2, group_score="top2_sum",
                       uses_correction_bias=True)
    router = type("R", (), {"spec": spec})()
    load = torch.tensor([0.0, 0.3, 0.0, 0.3, 0.0, 0.1, 0.0, 0.1, 0.001, 0.0, 0.05, 0.05, 0.0, 0.0, 0.05, 0.05])
    pairs = Romer(tau=0.9)._pairs(load, router, [True] * 16)
    masked = {c for c, _ in pairs}
    assert masked  # replacement still happens
    for group in range(4):
        left = [e for e in range(group * 4, group * 4 + 4) if e not in masked]
        assert len(left) != 1, (group, left)
    logits = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(16, dtype=torch.bool)
    mask[list(masked)] = True
    from romer_aihwkit.adapters.routing import route

    _, selected = route(spec, logits, torch.zeros(16), mask)
    reached = set(selected.unique().tolist())
    assert reached == set(range(16)) - masked


# ------------------------------------------------------------------ chip-state files (analog state)
def _chip(family="olmoe", device="pcm", engine="stacked", seed=0, romer=False, model_seed=0, scale_experts=1.0):
    digital = tiny_model(family, seed=model_seed)
    if scale_experts != 1.0:  # the same architecture and routers, other expert weights
        with torch.no_grad():
            for layer in digital.model.layers:
                layer.mlp.experts.down_proj.mul_(scale_experts)
    model = ra.convert_to_analog_moe(digital, device, engine=engine)
    model.program_analog_weights(seed=seed, t_inference=3600.0)
    if romer:
        ra.calibrate(model, torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0)),
                     callbacks=[ra.Romer(normalize=False, tau=0.95)], progress=False)
    return model


def _tiles(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("tiles") or n.endswith("scales")}


@pytest.fixture(scope="module")
def chip_file(tmp_path_factory):
    from romer_aihwkit.analog import save_analog_state

    path = tmp_path_factory.mktemp("chip") / "chip.safetensors"
    save_analog_state(_chip(seed=3), path)
    return path


@pytest.mark.parametrize("target, field", [
    (dict(family="qwen2_moe"), "architecture"),
    (dict(model_seed=1), "weights"),
    (dict(scale_experts=1.01), "weights"),
    (dict(device="gaussian-5"), "device"),
    (dict(engine="aihwkit"), "engine"),
])
def test_chip_state_of_another_model_device_or_engine_is_refused_untouched(chip_file, target, field):
    """Every field that makes a chip state belong to its model, including the digital weights: a
    chip programmed from other weights (another checkpoint, or only the experts changed) is refused."""
    from romer_aihwkit.analog import load_analog_state

    model = _chip(**target)
    before = _tiles(model)
    with pytest.raises(FingerprintMismatchError, match=field) as info:
        load_analog_state(model, chip_file)
    assert str(chip_file) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in _tiles(model).items())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop-tensor"])
def test_damaged_chip_state_names_the_file_and_changes_nothing(chip_file, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    from romer_aihwkit.analog import load_analog_state

    path = tmp_path / "chip.safetensors"
    if damage == "truncate":
        path.write_bytes(chip_file.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        from safetensors import safe_open

        with safe_open(str(chip_file), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(chip_file))
        tensors.pop(sorted(k for k in tensors if k.endswith("/tiles"))[0])
        save_file(tensors, str(path), metadata=meta)
    model = _chip()
    before = _tiles(model)
    with pytest.raises(ArtifactError) as info:
        load_analog_state(model, path)
    assert str(path) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in _tiles(model).items())


def test_chip_state_after_romer_restores_replicas_and_router_masks(tmp_path):
    from romer_aihwkit.analog import load_analog_state, save_analog_state

    calibrated = _chip(romer=True)
    masks = [r.expert_mask.clone() for r in find_routers(calibrated)]
    assert any(m.any() for m in masks), "the test needs a replaced expert"
    save_analog_state(calibrated, tmp_path / "chip.safetensors")
    fresh = _chip(seed=9)
    load_analog_state(fresh, tmp_path / "chip.safetensors")
    assert [torch.equal(a, r.expert_mask) for a, r in zip(masks, find_routers(fresh))] == [True] * len(masks)
    replicas = [m.replica_of.clone() for m in fresh.modules() if isinstance(m, AnalogExperts)]
    assert any((r >= 0).any() for r in replicas)
    x = torch.randint(3, 90, (1, 12))
    torch.manual_seed(0)
    a = calibrated(x).logits
    torch.manual_seed(0)
    assert torch.equal(fresh(x).logits, a)


@pytest.mark.parametrize("option, value", [("engine", "fast"), ("reference", "disk")])
def test_unknown_engine_or_reference_store_is_an_input_error(option, value):
    model = tiny_model("olmoe")
    with pytest.raises(InputError, match=f"{option}='{value}'"):
        ra.convert_to_analog_moe(model, "pcm", **{option: value})
    assert getattr(model, "analog_state", None) is None  # nothing converted


# --- issue 21: caches, model folders, artifacts ---
def _folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove that nothing on disk changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_params(model, before) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------ class 1: every cache/resume key field matters
@pytest.fixture(scope="module")
def hwa_base(tiny, tmp_path_factory):
    from romer_aihwkit.models import load_model

    model, tok = load_model(tiny)
    text = tmp_path_factory.mktemp("hwa-text") / "train.txt"
    text.write_text("To be, or not to be, that is the question. " * 40, encoding="utf-8")
    return model, tok, text


def _hwa_key_change(field, model, tok, text, tmp_path, monkeypatch):
    """The arguments of hwa_cache_key with ``field`` changed, and whether the model was changed by us."""
    import copy

    from romer_aihwkit.baselines.hwa import HWAConfig
    from romer_aihwkit.models import bundled_tokenizer

    args = dict(model=model, tokenizer=tok, device_config="pcm", train_text=str(text), config=HWAConfig(),
                fingerprint="files-a", stress=None)
    if field == "weights":
        other = copy.deepcopy(model)
        with torch.no_grad():
            next(other.parameters()).view(-1)[-1] += 1e-3  # one element the strided sample would not see
        args["model"] = other
    elif field == "files":
        args["fingerprint"] = "files-b"
    elif field == "stress":
        args["stress"] = "outliers:2x10"
    elif field == "tokenizer":
        tok2 = bundled_tokenizer()
        tok2.add_tokens(["<extra-token>"])
        args["tokenizer"] = tok2
    elif field == "device":
        same_name = tmp_path / "pcm.yaml"
        same_name.write_text("extends: pcm\nname: pcm\nout_noise: 0.07\n")
        args["device_config"] = str(same_name)
    elif field == "train_text":
        text.write_text(text.read_text() + "Whether 'tis nobler in the mind to suffer.")
    elif field == "code":
        import romer_aihwkit.baselines.hwa as hwa_module

        monkeypatch.setattr(hwa_module, "code_fingerprint", lambda: "another engine")
    else:
        args["config"] = HWAConfig(**{field: {"steps": 7, "lr": 1e-3, "batch_size": 3, "seq_len": 64,
                                              "weight_noise": 0.1, "train_blocks": 9, "seed": 1}[field]})
    return args


HWA_KEY_FIELDS = ["weights", "files", "stress", "tokenizer", "device", "train_text", "code", "steps", "lr",
                  "batch_size", "seq_len", "weight_noise", "train_blocks", "seed"]


@pytest.mark.parametrize("field", HWA_KEY_FIELDS)
def test_hwa_cache_key_field_matters(hwa_base, tmp_path, monkeypatch, field):
    """Changing any one thing that determines the HWA checkpoint changes its key (so the cache misses)."""
    from romer_aihwkit.baselines.hwa import HWAConfig, hwa_cache_key

    model, tok, text = hwa_base
    text_copy = tmp_path / "train.txt"
    shutil.copy(text, text_copy)
    before = _params(model)
    base = hwa_cache_key(model, tok, "pcm", str(text_copy), HWAConfig(), "files-a", None)
    args = _hwa_key_change(field, model, tok, text_copy, tmp_path, monkeypatch)
    changed = hwa_cache_key(**args)
    differs = sorted(k for k in base if base[k] != changed[k])
    assert differs == [{"steps": "config", "lr": "config", "batch_size": "config", "seq_len": "config",
                        "weight_noise": "config", "train_blocks": "config", "seed": "config"}.get(field, field)]
    assert _same_params(model, before)  # computing a key changes no weight


def test_hwa_cache_key_is_content_not_path(hwa_base, tmp_path):
    """The same text under another path, and the same device content under another name, give the same key."""
    from romer_aihwkit.baselines.hwa import hwa_cache_key

    model, tok, text = hwa_base
    moved = tmp_path / "elsewhere" / "renamed.txt"
    moved.parent.mkdir()
    shutil.copy(text, moved)
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text("extends: pcm\nname: renamed\ndescription: same physics\n")
    assert hwa_cache_key(model, tok, "pcm", str(text)) == hwa_cache_key(model, tok, str(renamed), str(moved))


def test_hwa_checkpoint_of_stressed_model_is_not_reused_unstressed(hwa_base, tmp_path, monkeypatch):
    """The reported case: a `stress none` run must not reuse the checkpoint trained on the stressed model."""
    import copy

    import romer_aihwkit.baselines.hwa as hwa
    from romer_aihwkit.stress import apply_stress

    model, tok, text = hwa_base
    trained: list[str] = []

    def fake_finetune(m, tokenizer, device, train_text, config, progress=False):
        out = copy.deepcopy(m)
        setattr(out.config, hwa.HWA_MARK, {"device": "pcm"})
        trained.append(hwa.hwa_cache_key(m, tokenizer, device, train_text, config)["weights"])
        return out, {"config": {}}

    monkeypatch.setattr(hwa, "hwa_finetune", fake_finetune)
    stressed = copy.deepcopy(model)
    apply_stress(stressed, "outliers:2x10")
    cache = tmp_path / "hwa"
    hwa.hwa_checkpoint(stressed, tok, "m", "pcm", cache, str(text), hwa.HWAConfig(steps=1), stress="outliers:2x10")
    before = _folder_state(cache)
    plain_params = _params(model)
    hwa.hwa_checkpoint(model, tok, "m", "pcm", cache, str(text), hwa.HWAConfig(steps=1), stress=None)
    assert len(trained) == 2 and trained[0] != trained[1]  # a miss: trained again, from the plain model
    assert all(_folder_state(cache)[k] == v for k, v in before.items())  # the stressed checkpoint is kept
    assert _same_params(model, plain_params)
    _, record = hwa.hwa_checkpoint(model, tok, "m", "pcm", cache, str(text), hwa.HWAConfig(steps=1))
    assert len(trained) == 2 and record["key"]["stress"] == "none"  # and now a hit


def test_hwa_checkpoint_with_foreign_record_is_retrained(hwa_base, tmp_path, monkeypatch):
    """A cached folder whose recorded key is not the key asked for is not trusted."""
    import copy

    import romer_aihwkit.baselines.hwa as hwa

    model, tok, text = hwa_base
    calls = []

    def fake_finetune(m, tokenizer, device, train_text, config, progress=False):
        calls.append(1)
        out = copy.deepcopy(m)
        setattr(out.config, hwa.HWA_MARK, {"device": "pcm"})
        return out, {"config": {}}

    monkeypatch.setattr(hwa, "hwa_finetune", fake_finetune)
    cache = tmp_path / "hwa"
    hwa.hwa_checkpoint(model, tok, "m", "pcm", cache, str(text), hwa.HWAConfig(steps=1))
    record = next(cache.glob("*/hwa.json"))
    data = json.loads(record.read_text())
    data["key"]["train_text"] = "someone else's text"
    record.write_text(json.dumps(data))
    _, info = hwa.hwa_checkpoint(model, tok, "m", "pcm", cache, str(text), hwa.HWAConfig(steps=1))
    assert len(calls) == 2 and info["key"]["train_text"] != "someone else's text"


COMPARE_FIELDS = {
    "seq_len": dict(seq_len=64), "eval_blocks": dict(eval_blocks=3), "calib_blocks": dict(calib_blocks=5),
    "batch_size": dict(batch_size=2), "stress": dict(stress="outliers:2x10"), "t_inference": dict(t_inference=[60.0]),
    "eval_text": dict(eval_text="other.txt"), "calib_text": dict(calib_text="other.txt"),
    "train_text": dict(train_text="other.txt"), "hwa_steps": dict(hwa_steps=3), "devices": dict(devices=["gaussian-5"]),
    "models": dict(models=["olmoe-tiny", "qwen2moe-tiny"]),
}


@pytest.mark.parametrize("field", sorted(COMPARE_FIELDS))
def test_compare_settings_fingerprint_field_matters(field):
    base = CompareSettings(models=["olmoe-tiny"])
    changed = CompareSettings(**{"models": ["olmoe-tiny"], **COMPARE_FIELDS[field]})
    assert base.fingerprint() != changed.fingerprint()
    assert CompareSettings(models=["olmoe-tiny"], seeds=[7], methods=["romer"]).fingerprint() == base.fingerprint()


@pytest.mark.parametrize("which", ["model", "device", "eval_text", "calib_text", "train_text", "engine"])
def test_compare_input_fingerprints_follow_content(tiny, eval_text, tmp_path, monkeypatch, which):
    """Each input is keyed by its content: editing it changes its entry (a resume is refused), moving it does not."""
    from romer_aihwkit.experiments.runner import input_fingerprints

    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    device = tmp_path / "dev.yaml"
    device.write_text("extends: pcm\n")
    texts = {}
    for name in ("eval_text", "calib_text", "train_text"):
        texts[name] = tmp_path / f"{name}.txt"
        shutil.copy(eval_text, texts[name])
    settings = CompareSettings(models=[str(model)], devices=[str(device)], **{k: str(v) for k, v in texts.items()})
    before = input_fingerprints(settings)
    key = {"model": f"model {model}", "device": f"device {device}"}.get(which, which)
    if which == "model":
        gen = model / "generation_config.json"
        gen.write_text(gen.read_text().replace("}", ', "note": 1}', 1))
    elif which == "device":
        device.write_text("extends: pcm\nout_noise: 0.07\n")
    elif which == "engine":
        import romer_aihwkit.experiments.settings as resolving

        monkeypatch.setattr(resolving, "code_fingerprint", lambda: "another engine")
    else:
        texts[which].write_text(texts[which].read_text() + "x")
    after = input_fingerprints(settings)
    assert sorted(k for k in after if after[k] != before.get(k)) == [key]


def test_compare_resume_after_engine_change_is_refused(tiny, eval_text, tmp_path, monkeypatch):
    import romer_aihwkit.experiments.settings as resolving

    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    before = _folder_state(out)
    monkeypatch.setattr(resolving, "code_fingerprint", lambda: "another engine")
    one_line_error(runner.invoke(app, args), "engine", "simulation code", "--force")
    assert _folder_state(out) == before


# ------------------------------------------------------------------ class 2: model folders checked before loading
def _model_variant(tiny, tmp_path, tensors=None, config=None, drop=()):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny, folder)
    if tensors is not None:
        t = load_file(str(folder / "model.safetensors"))
        tensors(t)
        save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        c = json.loads((folder / "config.json").read_text())
        c.update(config)
        (folder / "config.json").write_text(json.dumps(c))
    for name in drop:
        (folder / name).unlink()
    return folder


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


def _poke(key, value):
    def edit(t):
        t[key].view(-1)[3] = value
    return edit


MODEL_FOLDER_CASES = {
    "missing_attention_weight": (dict(tensors=lambda t: t.pop("model.layers.0.self_attn.q_proj.weight")),
                                 ["model.layers.0.self_attn.q_proj.weight", "missing", "at random"]),
    "missing_expert_tensor": (dict(tensors=lambda t: t.pop("model.layers.1.mlp.experts.3.gate_proj.weight")),
                              ["experts.3.gate_proj.weight", "missing"]),
    "wrong_shaped_router": (dict(tensors=_set("model.layers.0.mlp.gate.weight", torch.zeros(7, 32))),
                            ["model.safetensors", "model.layers.0.mlp.gate.weight", "(7, 32)", "(8, 32)"]),
    "num_experts_disagrees": (dict(config={"num_experts": 4}), ["model.layers.0.mlp.gate.weight", "(4, 32)"]),
    "top_k_exceeds_experts": (dict(config={"num_experts_per_tok": 9}), ["config.json", "num_experts_per_tok=9", "(8)"]),
    "zero_layers": (dict(config={"num_hidden_layers": 0}), ["config.json", "num_hidden_layers", ">= 1"]),
    "heads_not_divisible": (dict(config={"num_key_value_heads": 3}), ["num_key_value_heads=3"]),
    "huge_declared_size": (dict(config={"hidden_size": 2**20, "intermediate_size": 2**20}), ["GiB", "available"]),
    "nan_weight": (dict(tensors=_poke("model.layers.1.mlp.experts.5.down_proj.weight", float("nan"))),
                   ["model.safetensors", "model.layers.1.mlp.experts.5.down_proj.weight", "NaN"]),
    "inf_weight": (dict(tensors=_poke("model.embed_tokens.weight", float("inf"))),
                   ["model.embed_tokens.weight", "infinite"]),
    "integer_weight": (dict(tensors=_set("model.norm.weight", torch.ones(32, dtype=torch.int32))),
                       ["model.norm.weight", "I32", "floating-point"]),
    "unexpected_weight": (dict(tensors=_set("model.layers.0.mlp.extra.weight", torch.zeros(2))),
                          ["model.layers.0.mlp.extra.weight", "not in the architecture"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_FOLDER_CASES))
def test_bad_model_folder_is_refused_before_use(tiny, tmp_path, case):
    from romer_aihwkit.models import load_model

    kwargs, fragments = MODEL_FOLDER_CASES[case]
    folder = _model_variant(tiny, tmp_path, **kwargs)
    before = _folder_state(folder)
    with pytest.raises(InputError) as info:
        load_model(str(folder))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert _folder_state(folder) == before


def test_model_larger_than_free_memory_names_the_figure(tiny, monkeypatch):
    import romer_aihwkit.models as models

    model, _ = models.load_model(tiny)
    count = sum(t.numel() for t in [*model.parameters(), *model.buffers()])
    monkeypatch.setattr(models, "_available_memory", lambda device=None: 1000)
    with pytest.raises(InputError, match=rf"{count:,} weights: about {count * 4 / 2**20:.1f} MiB in torch.float32, "
                                         r"but only 0\.0 MiB") as info:
        models.load_model(tiny)
    assert str(Path(tiny) / "config.json") in str(info.value)


def test_model_check_reads_headers_before_allocating(tiny, tmp_path, monkeypatch):
    """A truncated weight file is named from its header, and from_pretrained never runs."""
    import transformers

    folder = _model_variant(tiny, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])

    def boom(*a, **k):
        raise AssertionError("from_pretrained ran")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(InputError, match="truncated or corrupted") as info:
        ra.load_model(str(folder))
    assert str(folder / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("damage", ["missing_shard", "tensor_not_in_shard"])
def test_sharded_checkpoint_index_is_checked(tiny, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    folder = _model_variant(tiny, tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors"
                  for i, k in enumerate(names)}
    if damage == "missing_shard":
        (folder / "model-00002-of-00002.safetensors").unlink()
        fragments = ["model-00002-of-00002.safetensors", "incomplete"]
    else:
        weight_map[names[-1]] = "model-00001-of-00002.safetensors"
        fragments = [names[-1], "does not hold it"]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    before = _folder_state(folder)
    with pytest.raises(InputError) as info:
        ra.load_model(str(folder))
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert _folder_state(folder) == before


def test_sharded_checkpoint_loads_when_whole(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _model_variant(tiny, tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    files = {k: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, k in enumerate(names)}
    for shard in set(files.values()):
        save_file({k: tensors[k] for k in names if files[k] == shard}, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    model, _ = ra.load_model(str(folder))
    assert torch.equal(model.model.embed_tokens.weight, tensors["model.embed_tokens.weight"])


def test_folder_without_tokenizer_names_the_tokenizer(tiny, eval_text, tmp_path):
    folder = _model_variant(tiny, tmp_path, drop=("tokenizer.json", "tokenizer_config.json"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", "--model", str(folder), "--eval-text", str(eval_text), *TINY_RUN,
                                 "--out", str(out)])
    one_line_error(result, "no tokenizer", "tokenizer.save_pretrained")
    assert "eval" not in result.stderr.split("Error:")[1].split("tokenizer")[0]  # the text is not blamed
    assert not (out / "rows.jsonl").exists()
    model, tok = ra.load_model(str(folder))  # the API still loads the weights, without a tokenizer
    assert tok is None


def test_folder_with_broken_tokenizer_names_the_tokenizer(tiny, tmp_path):
    folder = _model_variant(tiny, tmp_path)
    (folder / "tokenizer.json").write_text("{not json")
    before = _folder_state(folder)
    with pytest.raises(InputError, match="tokenizer") as info:
        ra.load_model(str(folder))
    assert "tokenizer.json" in str(info.value) and str(folder) in str(info.value)
    assert _folder_state(folder) == before


def test_nan_model_folder_is_one_cli_line(tiny, eval_text, tmp_path):
    folder = _model_variant(tiny, tmp_path, tensors=_poke("model.layers.0.mlp.gate.weight", float("nan")))
    result = runner.invoke(app, ["compare", "--model", str(folder), "--eval-text", str(eval_text), *TINY_RUN,
                                 "--out", str(tmp_path / "out")])
    one_line_error(result, "model.layers.0.mlp.gate.weight", "NaN")


# ------------------------------------------------------------------ class 3: artifacts tied, checked, savable
def test_calibration_json_beside_tensors_of_another_chip_is_refused(olmoe_pcm, saved_calibration, tmp_path):
    """The reported case: chip 0's JSON with chip 1's tensors; the JSON's fingerprint matches, the pair does not."""
    other = _converted(seed=5)
    ra.calibrate(other, calib_tokens(seed=9), callbacks=[ra.Romer(tau=0.8)], progress=False)
    ra.save_calibration(other, tmp_path / "chip1")
    mixed = tmp_path / "mixed"
    shutil.copy(saved_calibration.with_suffix(".json"), mixed.with_suffix(".json"))
    shutil.copy((tmp_path / "chip1").with_suffix(".safetensors"), mixed.with_suffix(".safetensors"))
    before = snapshot(olmoe_pcm)
    with pytest.raises(ArtifactError, match="is not the tensor file mixed.json was saved with") as info:
        ra.load_calibration(olmoe_pcm, mixed)
    assert str(mixed.with_suffix(".safetensors")) in str(info.value)
    assert_same(snapshot(olmoe_pcm), before)


def test_calibration_json_without_tensor_hash_is_refused(olmoe_pcm, saved_calibration, tmp_path):
    bad = tmp_path / "old"
    shutil.copy(saved_calibration.with_suffix(".safetensors"), bad.with_suffix(".safetensors"))
    meta = json.loads(saved_calibration.with_suffix(".json").read_text())
    meta.pop("tensors_sha256")
    bad.with_suffix(".json").write_text(json.dumps(meta))
    before = snapshot(olmoe_pcm)
    with pytest.raises(ArtifactError, match="no hash of its tensor file") as info:
        ra.load_calibration(olmoe_pcm, bad)
    assert str(bad.with_suffix(".json")) in str(info.value)
    assert_same(snapshot(olmoe_pcm), before)


@pytest.mark.parametrize("saver", ["calibration", "chip_state"])
def test_saving_a_never_programmed_model_is_refused(tmp_path, saver):
    from romer_aihwkit.analog import save_analog_state

    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    before = _params(model)
    with pytest.raises(InputError, match="never programmed"):
        if saver == "calibration":
            ra.save_calibration(model, tmp_path / "calib")
        else:
            save_analog_state(model, tmp_path / "chip.safetensors")
    assert list(tmp_path.iterdir()) == []
    assert _same_params(model, before)


def test_saving_a_calibration_that_masks_every_expert_is_refused(tmp_path):
    model = _converted(seed=4)
    router = find_routers(model)[0]
    router.expert_mask.fill_(True)
    before = _params(model)
    with pytest.raises(InputError, match="could not be loaded back.*top_k=2"):
        ra.save_calibration(model, tmp_path / "calib")
    assert list(tmp_path.iterdir()) == []
    assert _same_params(model, before)


def _chip_variant(chip_file, dst, tensors=None, meta=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(chip_file), framework="pt") as f:
        metadata = dict(f.metadata())
    t = load_file(str(chip_file))
    if tensors is not None:
        tensors(t)
    metadata.update(meta or {})
    save_file(t, str(dst), metadata=metadata)
    return dst


def _all_masked(t):
    for k in [k for k in t if k.endswith("/expert_mask")]:
        t[k] = torch.ones_like(t[k])


def _all_but_one_masked(t):
    for k in [k for k in t if k.endswith("/expert_mask")]:
        t[k] = torch.ones_like(t[k])
        t[k][0] = False


def _tiles_fp16(t):
    for k in [k for k in t if k.endswith("/tiles")]:
        t[k] = t[k].half()


def _replica_negative(t):
    k = next(k for k in t if k.endswith("/replica_of"))
    t[k][0] = -5


CHIP_CASES = {
    "tiles_cast_to_float16": (dict(tensors=_tiles_fp16), ["/tiles", "torch.float16", "torch.float32"]),
    "every_expert_masked": (dict(tensors=_all_masked), ["expert_mask", "every expert"]),
    "fewer_than_top_k_routable": (dict(tensors=_all_but_one_masked), ["expert_mask", "fewer than top_k=2"]),
    "replica_index_negative": (dict(tensors=_replica_negative), ["replica_of", "-5"]),
    "seed_edited": (dict(meta={"seed": "7"}), ["seed=7", "fingerprint's seed=3"]),
    "seed_not_integer": (dict(meta={"seed": "0.7"}), ["seed", "0.7"]),
    "seed_negative": (dict(meta={"seed": "-1"}), ["seed", "-1"]),
    "t_inference_edited": (dict(meta={"t_inference": "60.0"}), ["t_inference=60.0", "fingerprint's t_inference"]),
    "t_inference_negative": (dict(meta={"t_inference": "-5.0"}), ["t_inference"]),
    "t_inference_text": (dict(meta={"t_inference": '"1 day"'}), ["t_inference", "1 day"]),
}


@pytest.mark.parametrize("case", sorted(CHIP_CASES))
def test_tampered_chip_state_is_refused_untouched(chip_file, tmp_path, case):
    from romer_aihwkit.analog import load_analog_state

    kwargs, fragments = CHIP_CASES[case]
    path = _chip_variant(chip_file, tmp_path / "chip.safetensors", **kwargs)
    model = _chip()
    before, state = _tiles(model), (model.analog_state.seed, model.analog_state.t_inference)
    masks = [r.expert_mask.clone() for r in find_routers(model)]
    with pytest.raises(ArtifactError) as info:
        load_analog_state(model, path)
    for fragment in [str(path), *fragments]:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert all(torch.equal(before[k], v) for k, v in _tiles(model).items())
    assert (model.analog_state.seed, model.analog_state.t_inference) == state
    assert all(torch.equal(m, r.expert_mask) for m, r in zip(masks, find_routers(model)))


def test_task_index_cache_follows_folder_content(tmp_path, monkeypatch):
    """lm-eval's task index is cached per folder content, not per folder path."""
    import types

    from romer_aihwkit.evaluation import tasks

    made = []
    stub = types.ModuleType("lm_eval.tasks")
    stub.TaskManager = lambda include_path, include_defaults: made.append(list(include_path)) or object()
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", stub)
    tasks._task_manager_for.cache_clear()
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "t.yaml").write_text("task: mine\n")
    first = tasks._task_manager((str(folder),), False)
    assert tasks._task_manager((str(folder),), False) is first and len(made) == 1
    (folder / "t.yaml").write_text("task: mine\ndataset_path: other\n")
    assert tasks._task_manager((str(folder),), False) is not first and len(made) == 2
    assert (folder / "t.yaml").read_text() == "task: mine\ndataset_path: other\n"
    tasks._task_manager_for.cache_clear()

# --- issue 21: output folders, requests, task code, rendering, bounded reads ---
from romer_aihwkit.data import text_size_limit  # noqa: E402
from romer_aihwkit.errors import ResultsFolderError  # noqa: E402
from romer_aihwkit.evaluation.records import load_rows  # noqa: E402
from romer_aihwkit.outputs import MARKER_FILE  # noqa: E402


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the lock file included: a refusal must not create it)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _writing_command(command: str, tiny: str, out: str) -> list[str]:
    """The cheapest invocation of each writing command into ``out``."""
    small = ["--seq-len", "16", "--calib-blocks", "1", "--batch-size", "1"]
    return {
        "compare": ["compare", "--model", tiny, *TINY_RUN, "--out", out],
        "diagnose": ["diagnose", "--model", tiny, "--seeds", "1", "--eval-blocks", "1", *small, "--out", out],
        "calibrate": ["calibrate", "--model", tiny, *small, "--out", out],
        "convert": ["convert", "--model", tiny, "--out", out],
    }[command]


WRITERS = ["compare", "diagnose", "calibrate", "convert"]


@pytest.mark.parametrize("command", WRITERS)
def test_empty_out_is_refused(tiny, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("mine\n")
    one_line_error(runner.invoke(app, _writing_command(command, tiny, "")), "--out is empty")
    assert tree(tmp_path) == {"report.md": b"mine\n"}  # nothing written into the current folder


@pytest.mark.parametrize("command", WRITERS)
def test_folder_of_someone_elses_files_is_refused(tiny, tmp_path, command):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "settings.json").write_text('{"their": "settings"}')
    (out / "notes.txt").write_text("keep me")
    before = tree(out)
    one_line_error(runner.invoke(app, _writing_command(command, tiny, str(out))), "did not write", "--force",
                   "settings.json")
    assert tree(out) == before  # no lock, no marker, nothing overwritten


def test_api_run_comparison_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "report.md").write_text("their report")
    with pytest.raises(ResultsFolderError, match="did not write"):
        run_comparison(CompareSettings(models=["x"], methods=["none"], seeds=[0]), out)
    assert tree(out) == {"report.md": b"their report"}


def test_diagnose_refuses_a_compare_folder(tiny, eval_text, tmp_path):
    _, out, _ = fresh_run(tiny, eval_text, tmp_path)
    before = tree(out)
    one_line_error(runner.invoke(app, _writing_command("diagnose", tiny, str(out))), "output of `compare`",
                   "--force")
    assert tree(out) == before  # the compare report is not replaced


def test_compare_refuses_a_diagnose_folder(tiny, tmp_path):
    out = tmp_path / "diag"
    out.mkdir()
    (out / MARKER_FILE).write_text(json.dumps({"written_by": "romer-aihwkit", "kind": "diagnosis",
                                               "command": "diagnose"}))
    (out / "report.md").write_text("# diagnosis\n")
    (out / "diagnosis.json").write_text("{}")
    before = tree(out)
    one_line_error(runner.invoke(app, _writing_command("compare", tiny, str(out))), "output of `diagnose`")
    assert tree(out) == before


def test_diagnose_takes_the_folder_lock(tiny, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        one_line_error(runner.invoke(app, _writing_command("diagnose", tiny, str(out))), "in use by another")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(tree(out)) == [LOCK_FILE]  # only the holder's lock file; no marker, no report


def test_force_clears_the_plots_of_the_discarded_configuration(tiny, eval_text, tmp_path):
    _, out, args = fresh_run(tiny, eval_text, tmp_path)
    old_plots = sorted(p.name for p in out.glob("*.png"))
    assert old_plots and all("dev" in name for name in old_plots)
    other = ["compare", "--model", tiny, "--devices", "pcm", "--eval-text", str(eval_text), *TINY_RUN,
             "--out", str(out)]
    one_line_error(runner.invoke(app, other), "different configuration")
    assert sorted(p.name for p in out.glob("*.png")) == old_plots  # refused: nothing discarded
    result = runner.invoke(app, [*other, "--force"])
    assert result.exit_code == 0, result.output
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots and not set(plots) & set(old_plots)  # the discarded configuration's plots are gone
    assert {r.device for r in load_rows(out)} == {"pcm"}


@pytest.mark.parametrize("where", ["chmod", "lock", "parent"])
def test_read_only_out_is_one_line(tiny, tmp_path, monkeypatch, where):
    base = tmp_path / "ro"
    base.mkdir()
    out = base
    if where == "chmod":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root ignores permissions")
        base.chmod(0o555)
    elif where == "lock":  # what a read-only folder does to the lock, also under root
        from filelock import FileLock

        def denied(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", self.lock_file)

        monkeypatch.setattr(FileLock, "acquire", denied)
    else:
        (base / "a-file").write_text("x")
        out = base / "a-file" / "out"
    before = tree(base)
    try:
        result = runner.invoke(app, _writing_command("compare", tiny, str(out)))
        one_line_error(result, "cannot", str(base))
        assert tree(base) == before
    finally:
        base.chmod(0o755)


@pytest.mark.parametrize("seq_len", ["129", "4096"])
def test_seq_len_beyond_the_models_positions_is_refused(tiny, tmp_path, seq_len):
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, "--methods", "none", "--seeds", "1", "--seq-len", seq_len,
            "--eval-blocks", "1", "--calib-blocks", "1", "--out", str(out)]
    one_line_error(runner.invoke(app, args), f"--seq-len {seq_len}", "128 positions")
    assert not out.exists()


def test_blocks_longer_than_positions_are_refused_by_the_api():
    model = tiny_model("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="at most 64 positions"):
        ra.perplexity(model, torch.randint(3, 90, (1, 65)), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_more_eval_blocks_than_the_text_has_records_the_actual_count(tiny, eval_text, tmp_path):
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, "--methods", "none", "--seeds", "1", "--seq-len", "16",
            "--eval-blocks", "1000", "--calib-blocks", "1", "--batch-size", "8", "--eval-text", str(eval_text),
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "results.json").read_text())["settings"]
    used = settings["blocks_used"][tiny]["eval_blocks"]
    assert 1 < used < 1000 and settings["eval_blocks"] == used  # what was used, not what was asked
    assert any("--eval-blocks 1000 asked" in w and f"only {used} blocks" in w for w in settings["warnings"])
    assert "--eval-blocks 1000 asked" in result.stderr


@pytest.mark.parametrize("option, value", [("--model", "{tiny},{tiny}"), ("--devices", "pcm,pcm"),
                                           ("--devices", "{dev},./{devname}")])
def test_duplicates_in_lists_are_refused(tiny, tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev.yaml").write_text("extends: pcm\n")
    value = value.format(tiny=tiny, dev=tmp_path / "dev.yaml", devname="dev.yaml")
    args = ["compare", "--model", tiny, *TINY_RUN, "--out", "out", option, value]
    one_line_error(runner.invoke(app, args), "more than once")
    assert sorted(tree(tmp_path)) == ["dev.yaml"]


def test_calibration_text_with_identical_content_is_flagged(tiny, eval_text, tmp_path):
    copy = tmp_path / "calib-copy.txt"
    shutil.copy(eval_text, copy)
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, *TINY_RUN, "--eval-text", str(eval_text), "--calib-text", str(copy),
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "identical content" in result.stderr
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert any("identical content" in w for w in settings["warnings"])
    assert ra.text_blocks(str(copy), seq_len=8).shape[0] > 0 and copy.read_bytes() == eval_text.read_bytes()


@pytest.mark.parametrize("seed", [0.7, True, "1", 2**31])
def test_non_integer_seed_is_refused_and_the_chip_is_unchanged(olmoe_pcm, seed):
    before = snapshot(olmoe_pcm)
    state = (olmoe_pcm.analog_state.seed, olmoe_pcm.analog_state.t_inference)
    with pytest.raises(InputError, match="seed"):
        olmoe_pcm.program_analog_weights(seed=seed)
    assert (olmoe_pcm.analog_state.seed, olmoe_pcm.analog_state.t_inference) == state
    assert_same(snapshot(olmoe_pcm), before)


def test_non_integer_cli_seed_is_refused(tiny, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["calibrate", "--model", tiny, "--seed", "0.7", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--seed" in result.output and "valid integer" in result.output
    assert not out.exists()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_device_yaml_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError, match="holds no fields") as info:
        load_device_config(path)
    assert str(path) in str(info.value)
    assert path.read_text() == text


@pytest.mark.parametrize("text, key", [("extends: pcm\nout_noise: 0.01\nout_noise: 0.2\n", "out_noise"),
                                       ("extends: pcm\ninput_range: {init_value: 2.0, init_value: 3.0}\n",
                                        "init_value")])
def test_duplicate_yaml_key_is_refused(tmp_path, text, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError, match="duplicate key") as info:
        load_device_config(path)
    assert key in str(info.value) and str(path) in str(info.value)
    one_line_error(runner.invoke(app, ["devices", "show", str(path)]), "duplicate key", key)


def _hwa(**kw):
    from romer_aihwkit.baselines.hwa import HWAConfig

    return HWAConfig(**kw)


def _method(**kw):
    from romer_aihwkit.experiments.methods import Method

    return Method("m", "d", **kw)


@pytest.mark.parametrize("build, fragment", [
    (lambda: _hwa(lr=float("inf")), "lr"),
    (lambda: _hwa(lr=float("nan")), "lr"),
    (lambda: _hwa(seed=0.5), "seed"),
    (lambda: ra.Romer(super_expert_ratio=float("inf")), "super_expert_ratio"),
    (lambda: ra.Romer(seed=0.7), "seed"),
    (lambda: ra.Romer(capacity=1.5), "capacity"),
    (lambda: _method(hetero_fraction=float("nan")), "hetero_fraction"),
    (lambda: CompareSettings(models=["x"], methods=["none"], seeds=[0], t_inference=[float("nan")]), "t_inference"),
])
def test_non_finite_or_non_integer_hyperparameters_are_refused(build, fragment):
    with pytest.raises(InputError, match=fragment):
        build()


@pytest.mark.parametrize("seeds, fragment", [([0, 0, 0], "more than once"), ([0, 1.5], "integer"), (2.5, "integer")])
def test_diagnose_api_refuses_repeated_or_fractional_seeds(seeds, fragment):
    model = tiny_model("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=fragment):
        ra.diagnose(model, "pcm", torch.randint(3, 90, (1, 8)), seeds=seeds)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert getattr(model, "analog_state", None) is None


def test_failed_multi_part_stress_leaves_the_model_unchanged(monkeypatch):
    import romer_aihwkit.stress as stress

    model = tiny_model("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def fail(*args, **kwargs):
        raise InputError("stress check failed (injected)")

    monkeypatch.setattr(stress, "_check_unchanged", fail)
    with pytest.raises(InputError, match="injected"):
        stress.apply_stress(model, "outliers:3x50+heavy-weights:2x20@all")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert getattr(model, "stress_report", None) is None
    monkeypatch.undo()
    stress.apply_stress(model, "outliers:3x50")  # the model is still fresh, so it can be stressed once


def test_stress_parts_beyond_the_hidden_size_change_nothing():
    model = tiny_model("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="hidden size is 32"):
        ra.apply_stress(model, "outliers:3x50+outliers:30x2")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _task_folder(tmp_path: Path, via_include: bool = False) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    code = "task: evil\ndataset_path: json\ncustom_dataset: !function evil.load\n"
    if via_include:
        (tmp_path / "base.yaml").write_text(code)
        (folder / "evil.yaml").write_text("include: ../base.yaml\ntask: evil\n")
    else:
        (folder / "evil.yaml").write_text(code)
    (folder / "evil.py").write_text("raise SystemExit('task code ran')\n")
    return folder


@pytest.mark.parametrize("via_include", [False, True])
def test_task_code_needs_trust_task_code(tiny, tmp_path, via_include):
    folder = _task_folder(tmp_path, via_include)
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, *TINY_RUN, "--tasks", "evil", "--include-path", str(folder),
            "--out", str(out)]
    one_line_error(runner.invoke(app, args), "!function", "--trust-task-code",
                   "base.yaml" if via_include else "evil.yaml")
    assert not out.exists()
    with pytest.raises(UserError, match="trust_task_code"):
        ra.evaluate_tasks(tiny_model("olmoe"), None, "evil", include_path=folder)


def test_bundled_tasks_use_task_code_and_are_trusted():
    from romer_aihwkit.evaluation.tasks import BUNDLED_TASKS_DIR, check_task_code, find_task_code

    assert find_task_code([BUNDLED_TASKS_DIR])  # the bundled YAMLs do name utils.py functions
    check_task_code(None)  # and need no flag
    assert "--trust-task-code" in runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "200"}).output


@pytest.mark.parametrize("name", ["my:x:dev", "[bold]dev[/bold]", "a:thumbs_up:b"])
def test_device_names_print_literally(tmp_path, name):
    path = tmp_path / "dev.yaml"
    path.write_text(f"extends: pcm\nname: '{name}'\n")
    result = runner.invoke(app, ["devices", "show", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert name in result.output and "❌" not in result.output and "👍" not in result.output
    one_line_error(runner.invoke(app, ["devices", "show", name]), name)  # the error message, literally


def _bomb(path: Path, size: int) -> Path:
    import gzip

    with gzip.open(path, "wb") as f:
        line = b"to be or not to be that is the question\n"
        for _ in range(size // len(line) + 1):
            f.write(line)
    return path


def test_gzip_bomb_is_refused_naming_the_limit(tmp_path):
    path = _bomb(tmp_path / "bomb.txt.gz", 3 * 2**20)
    packed = path.read_bytes()
    assert len(packed) < 2**20  # small on disk
    with pytest.raises(InputError, match=f"limit of {2**20} bytes") as info:
        ra.text_blocks(str(path), seq_len=8, max_text_bytes=2**20)
    assert str(path) in str(info.value) and "max_text_bytes" in str(info.value)
    with text_size_limit(2**20), pytest.raises(InputError, match="limit of 1048576 bytes"):
        ra.text_blocks(str(tmp_path), seq_len=8)  # a folder counts its files together
    assert path.read_bytes() == packed
    assert ra.text_blocks(str(path), seq_len=8, max_blocks=2, max_text_bytes=4 * 2**20).shape == (2, 8)


def test_plain_text_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x y z\n" * 50_000)
    with pytest.raises(InputError, match="limit of 1000 bytes"):
        ra.text_blocks(str(path), seq_len=8, max_text_bytes=1000)


@pytest.mark.parametrize("size, fragment", [("1M", "limit of 1048576 bytes"), ("lots", "invalid --max-text-size")])
def test_cli_max_text_size(tiny, tmp_path, size, fragment):
    text = _bomb(tmp_path / "eval.txt.gz", 2 * 2**20)
    out = tmp_path / "out"
    args = ["compare", "--model", tiny, *TINY_RUN, "--eval-text", str(text), "--max-text-size", size,
            "--out", str(out)]
    one_line_error(runner.invoke(app, args), fragment)
    assert not {"rows.jsonl", "results.json", "report.md"} & set(tree(out))  # no result of the refused run
