"""Hardware-aware training (methods ``hwa``, ``hwa+romer``): training tiles, write-back, cache, runner."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import FACTORIES, tiny_model

from romer_aihwkit.baselines.hwa import (
    HWA_MARK,
    HWAConfig,
    _attach_training_tiles,
    _digital_state,
    hwa_checkpoint,
    hwa_finetune,
    hwa_rpu_config,
    is_hwa_trained,
)
from romer_aihwkit.errors import InputError
from romer_aihwkit.experiments import get_method, list_methods, prepare_model

SMALL_HWA = HWAConfig(steps=3, batch_size=2, seq_len=32, train_blocks=16, lr=1e-3)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_training_tiles_hold_the_weights_and_write_back_to_the_original_layout(family, tokens):
    model = tiny_model(family)
    student = copy.deepcopy(model)
    plan = _attach_training_tiles(student, lambda: hwa_rpu_config("ideal", 0.0))
    state = _digital_state(plan)
    params = dict(model.named_parameters())
    assert state and set(state) <= set(params)
    for name, value in state.items():
        assert value.shape == params[name].shape, name
        torch.testing.assert_close(value, params[name].float(), atol=1e-6, rtol=1e-6)
    # On an ideal device the training tiles compute what the digital matrices compute: same logits.
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(tokens).logits, model(tokens).logits, atol=1e-4, rtol=1e-4)


def test_weight_noise_modifier_is_applied_in_training_only():
    from aihwkit.simulator.parameters.enums import WeightModifierType

    rpu = hwa_rpu_config("pcm", 0.05)
    assert rpu.modifier.type == WeightModifierType.ADD_NORMAL and rpu.modifier.std_dev == 0.05
    assert rpu.forward.out_noise == 0.04 and rpu.forward.w_noise == 0.0  # the preset's periphery
    assert hwa_rpu_config("pcm", 0.0).modifier.type == WeightModifierType.NONE

    from romer_aihwkit.baselines.hwa import _analog_linear

    torch.manual_seed(0)
    weight, x = torch.randn(32, 64), torch.randn(256, 64)
    noisy = _analog_linear(weight, None, lambda: hwa_rpu_config("ideal", 0.1))  # no periphery noise on `ideal`
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert not torch.allclose(a, b)  # fresh weight noise every forward while training
    # ADD_NORMAL: weight noise of std 0.1 x max|w|, so output noise of std 0.1 x max|w| x |x|
    expected = 0.1 * weight.abs().max() * x.pow(2).sum(1).mean().sqrt()
    torch.testing.assert_close((a - x @ weight.T).std(), expected, atol=0.0, rtol=0.25)
    noisy.eval()
    torch.testing.assert_close(noisy(x), x @ weight.T, atol=1e-5, rtol=1e-5)  # none at inference


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from test_runner import make_tiny_model_folder

    return make_tiny_model_folder(tmp_path_factory.mktemp("hwa-tiny"))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    from romer_aihwkit.data import read_bundled_text

    path = tmp_path_factory.mktemp("train") / "train.txt"
    path.write_text(read_bundled_text("train")[:20000])
    return str(path)


def test_hwa_finetune_trains_routers_and_experts_only(tiny_folder, train_file):
    from romer_aihwkit.models import load_model

    model, tok = load_model(tiny_folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, info = hwa_finetune(model, tok, "pcm", train_text=train_file, config=SMALL_HWA)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".mlp.gate." in k or ".mlp.experts." in k for k in changed), changed
    assert any(".mlp.gate." in k for k in changed) and any(".mlp.experts." in k for k in changed)
    assert type(trained) is type(model) and is_hwa_trained(trained) and not is_hwa_trained(model)
    assert info["config"]["steps"] == 3 and info["trained_matrices"] == 2 * (1 + 2 * 8)
    assert info["seconds"] > 0 and info["peak_memory_mb"] > 0 and info["trained_parameters"] > 0
    assert len(info["losses"]) == 3 and all(x > 0 for x in info["losses"])
    # the digital checkpoint converts like any model
    amodel = prepare_model(trained, "pcm", "hwa")
    amodel.program_analog_weights(seed=0)
    assert torch.isfinite(amodel(torch.randint(3, 100, (1, 16))).logits).all()


def test_hwa_methods_need_a_trained_model(tiny_folder):
    from romer_aihwkit.models import load_model

    assert {"hwa", "hwa+romer"} <= set(list_methods())
    assert get_method("hwa").conversion_key() == get_method("hwa+romer").conversion_key()
    assert get_method("hwa").conversion_key() != get_method("romer").conversion_key()
    with pytest.raises(InputError, match="hardware-aware trained"):
        prepare_model(load_model(tiny_folder)[0], "pcm", "hwa+romer")
    model, tok = load_model(tiny_folder)
    with pytest.raises(InputError, match="before convert_to_analog_moe"):
        hwa_finetune(prepare_model(model, "pcm", "global"), tok, "pcm", config=SMALL_HWA)


def test_checkpoint_is_cached_and_saved_in_the_original_layout(tiny_folder, train_file, tmp_path, monkeypatch):
    from transformers import OlmoeForCausalLM

    from romer_aihwkit.baselines import hwa
    from romer_aihwkit.models import load_model

    model, tok = load_model(tiny_folder)
    first, info = hwa_checkpoint(model, tok, tiny_folder, "pcm", tmp_path, train_text=train_file, config=SMALL_HWA)
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert "_pcm_steps3_seed0_" in folder.name and json.loads((folder / "hwa.json").read_text())["seconds"] > 0
    reloaded = OlmoeForCausalLM.from_pretrained(folder)  # the original class reads it
    assert getattr(reloaded.config, HWA_MARK)["device"] == "pcm"

    def refuse(*args, **kwargs):
        raise AssertionError("trained again instead of reusing the cached checkpoint")

    monkeypatch.setattr(hwa, "hwa_finetune", refuse)
    second, info2 = hwa_checkpoint(model, tok, tiny_folder, "pcm", tmp_path, train_text=train_file, config=SMALL_HWA)
    assert info2 == json.loads(json.dumps(info))
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    monkeypatch.undo()
    (folder / "config.json").unlink()  # a record without the checkpoint (results shipped without weights)
    third, _ = hwa_checkpoint(model, tok, tiny_folder, "pcm", tmp_path, train_text=train_file, config=SMALL_HWA)
    assert (folder / "config.json").is_file()
    monkeypatch.setattr(hwa, "hwa_finetune", refuse)
    with pytest.raises(AssertionError, match="trained again"):  # other settings: another checkpoint
        hwa_checkpoint(model, tok, tiny_folder, "rram-wan2022", tmp_path, train_text=train_file, config=SMALL_HWA)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0.0), dict(weight_noise=1.5), dict(train_blocks=0)])
def test_hwa_config_rejects_bad_values(bad):
    with pytest.raises(InputError, match="HWA"):
        HWAConfig(**bad)
