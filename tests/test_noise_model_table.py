"""Adding a noise model touches one place: an entry in the noise-model table (plus a preset YAML)."""

import pytest
import torch

from romer_aihwkit.devices import (
    FIELD_CHOICES,
    NOISE_MODEL_TABLE,
    NOISE_MODELS,
    DeviceConfigError,
    NoiseModelSpec,
    load_device_config,
    register_noise_model,
)


def _build(config):
    from aihwkit.inference.noise.custom import StateIndependentNoiseModel

    g_max = 25.0 if config.g_max is None else config.g_max
    return StateIndependentNoiseModel(g_max=g_max, prog_coeff=[0.1 * g_max, 0.0, 0.0],
                                      prog_noise_scale=config.prog_noise_scale,
                                      drift_nu_mean=0.0, drift_nu_std=0.0, read_noise_scale=0.0)


FAKE = NoiseModelSpec(
    "fake-rram", "StateIndependentNoiseModel", "StateIndependentNoiseModel at 10 % (a test model)", _build,
    source="tests", scales=("prog_noise_scale",), default_g_max=25.0, g_max_max=50.0,
    allowed_t_inference=(1.0, 60.0), modelled=lambda c: [f"fake programming noise x{c.prog_noise_scale:g}"],
    unmodelled=("fake drift",),
)


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.delitem(NOISE_MODEL_TABLE, FAKE.name, raising=False)
    register_noise_model(FAKE)  # the one place
    yield FAKE
    del NOISE_MODEL_TABLE[FAKE.name]


def test_a_registered_noise_model_is_validated_mapped_and_described(fake_model, tmp_path):
    path = tmp_path / "fake.yaml"
    path.write_text("extends: ideal\nnoise_model: fake-rram\ng_max: 40.0\nprog_noise_scale: 2.0\nt_inference: 60.0\n")
    cfg = load_device_config(path)
    assert "fake-rram" in FIELD_CHOICES["noise_model"] and NOISE_MODELS["fake-rram"].endswith("(a test model)")
    model = cfg.rpu_config().noise_model
    assert type(model).__name__ == "StateIndependentNoiseModel" and model.prog_noise_scale == 2.0
    assert model.g_max == 40.0
    assert cfg.modelled_nonidealities()[0] == "fake programming noise x2"
    assert "fake drift" in cfg.unmodelled_nonidealities()
    assert cfg.aihwkit_deviations() == ["g_max 40 uS (AIHWKit's StateIndependentNoiseModel default: 25 uS)"]
    programmed = model.apply_programming_noise_to_conductance(torch.full((64, 64), 20.0))
    assert 1.0 < float(programmed.std()) < 10.0  # 2 x 10 % of g_max = 8 uS


@pytest.mark.parametrize(("fields", "field", "message"), [
    ("g_max: 60.0", "g_max", "StateIndependentNoiseModel is characterised up to 50.0 uS"),
    ("drift_scale: 2.0", "drift_scale", "'fake-rram' has no such term"),
    ("t_inference: 3600.0", "t_inference", "StateIndependentNoiseModel has measurement data only for"),
])
def test_the_table_entry_drives_validation(fake_model, tmp_path, fields, field, message):
    path = tmp_path / "bad.yaml"
    base = "" if field == "t_inference" else "t_inference: 1.0\n"  # each key once (a repeated key is refused)
    path.write_text(f"extends: ideal\nnoise_model: fake-rram\n{base}{fields}\n")
    with pytest.raises(DeviceConfigError) as info:
        load_device_config(path)
    assert message in str(info.value) and field in str(info.value) and "bad.yaml" in str(info.value)


def test_an_unregistered_noise_model_is_refused_with_the_table_as_choices(tmp_path):
    path = tmp_path / "unknown.yaml"
    path.write_text("extends: ideal\nnoise_model: fake-rram\n")
    with pytest.raises(DeviceConfigError, match="noise_model") as info:
        load_device_config(path)
    assert all(name in str(info.value) for name in NOISE_MODEL_TABLE)
