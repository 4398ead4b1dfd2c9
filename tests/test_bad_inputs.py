"""Hostile inputs: every bad input gets a clear error, no silent wrong result, nothing lost.

A matrix over the CLI, device YAML files, the Python API, saved artifacts and concurrent runs. Each
case asserts a non-zero exit (CLI) or the package's own error type (API), a message naming the
file / option / value, no traceback, and that nothing already there changed or was lost.
"""

from __future__ import annotations

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
    assert report["romer"]["replaced_experts"] > 0
    path = tmp_path_factory.mktemp("calib") / "calib"
    ra.save_calibration(olmoe_pcm, path)
    return path


def _edit_tensors(src: Path, dst: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src.with_suffix(".safetensors")))
    edit(tensors)
    save_file(tensors, str(dst.with_suffix(".safetensors")), metadata={"format": "romer-aihwkit-calibration/2"})
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))


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
