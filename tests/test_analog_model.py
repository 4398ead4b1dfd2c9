"""A converted model is an ``AnalogMoEModel``: typed methods on its class, not functions patched onto it."""

import copy
import json

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogMoEModel, analog_state
from romer_aihwkit.analog.model import analog_class_of

METHODS = ("program_analog_weights", "drift_analog_weights", "save_pretrained", "save_chip_state",
           "load_chip_state", "save_calibration", "load_calibration")


def converted(family="olmoe", device="pcm", seed=3):
    model = ra.convert_to_analog_moe(tiny_model(family), device)
    model.program_analog_weights(seed=seed, t_inference=3600.0)
    return model


def seeded_logits(model, tokens, seed=0):
    torch.manual_seed(seed)  # output noise is drawn per forward
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "legacy_mixtral"])
def test_conversion_makes_the_model_an_instance_of_a_cached_subclass(family):
    model = tiny_model(family)
    original = type(model)
    out = ra.convert_to_analog_moe(model, "ideal")
    assert out is model
    assert isinstance(model, AnalogMoEModel) and isinstance(model, original)
    assert type(model).__name__ == f"Analog{original.__name__}" and type(model).original_class is original
    assert type(model) is analog_class_of(original) is analog_class_of(type(model))
    again = ra.convert_to_analog_moe(tiny_model(family), "ideal")
    assert type(again) is type(model)  # one class per original class, not one per instance
    for name in METHODS:
        assert name not in vars(model), f"{name} is patched onto the instance"
        assert getattr(type(model), name) is getattr(AnalogMoEModel, name)
    assert isinstance(model.analog_state, ra.analog.AnalogState) and analog_state(model) is model.analog_state


def test_an_unconverted_model_is_not_an_analog_model():
    model = tiny_model("olmoe")
    assert not isinstance(model, AnalogMoEModel)
    with pytest.raises(ValueError, match="not a converted model"):
        analog_state(model)


def test_methods_and_functional_api_program_the_same_chip(tokens):
    a = converted(seed=5)
    b = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    ra.analog.program_analog_weights(b, seed=5)
    ra.analog.drift_analog_weights(b, t_inference=3600.0)
    assert torch.equal(seeded_logits(a, tokens), seeded_logits(b, tokens))
    assert (a.analog_state.seed, a.analog_state.t_inference) == (b.analog_state.seed, b.analog_state.t_inference)


def test_deepcopy_keeps_class_state_and_chip(tokens):
    model = converted()
    clone = copy.deepcopy(model)
    assert type(clone) is type(model)
    assert clone.analog_state is not model.analog_state and clone.analog_state.seed == 3
    assert torch.equal(seeded_logits(clone, tokens), seeded_logits(model, tokens))
    clone.program_analog_weights(seed=4)  # re-programming the copy leaves the original alone
    assert model.analog_state.seed == 3


def test_save_pretrained_names_the_original_class_and_reloads_as_it(tmp_path):
    model = converted()
    original = type(model).original_class
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [original.__name__]
    assert type(model).__name__ == f"Analog{original.__name__}"  # the class is back after saving
    reloaded = original.from_pretrained(tmp_path)
    assert type(reloaded) is original
    reference = tiny_model("olmoe")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_chip_state_and_calibration_round_trip_through_the_methods(tmp_path, tokens):
    model = converted()
    ra.calibrate(model, tokens.repeat(2, 2), callbacks=[ra.Romer()])
    chip = model.save_chip_state(tmp_path / "chip.safetensors")
    paths = model.save_calibration(tmp_path / "calib")
    assert chip.is_file() and all(p.is_file() for p in paths)
    expected = seeded_logits(model, tokens)

    other = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    other.load_chip_state(chip)
    assert torch.equal(seeded_logits(other, tokens), expected)
    fresh = converted()
    meta = fresh.load_calibration(tmp_path / "calib")
    assert meta["model_class"] == "OlmoeForCausalLM"
    assert torch.equal(seeded_logits(fresh, tokens), expected)


def test_generate_and_router_logits_work_on_the_converted_class(tokens):
    model = converted()
    out = model.generate(tokens[:, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (tokens.shape[0], 7)
    with torch.no_grad():
        router_logits = model(tokens, output_router_logits=True).router_logits
    assert len(router_logits) == 2
