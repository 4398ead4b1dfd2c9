"""Device configs: every preset loads, builds an AIHWKit torch tile and runs program/drift/forward."""

from __future__ import annotations

import warnings

import pytest
import torch

from romer_aihwkit.devices import (
    PRESET_DIR,
    WAN2022_T_INFERENCE,
    DeviceConfig,
    DeviceConfigError,
    list_device_configs,
    load_device_config,
)
from romer_aihwkit.devices.mapping import cxx_tiles_available

PRESETS = list_device_configs()
IN, OUT = 64, 32


def _digital() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(IN, OUT, bias=False)


def _analog(cfg: DeviceConfig, lin: torch.nn.Linear):
    """AIHWKit's own tiles for ``cfg``: torch tiles, or C++ tiles for the forward non-idealities only those
    simulate (where they run; elsewhere the torch-tile subset of ``cfg``)."""
    from aihwkit.nn import AnalogLinear

    if cfg.cxx_only_forward() and cxx_tiles_available() is not None:
        cfg = cfg.torch_tile_subset()
    layer = AnalogLinear(IN, OUT, bias=False, rpu_config=cfg.aihwkit_rpu_config())
    layer.set_weights(lin.weight.data.clone())
    return layer.eval()


def _run(cfg: DeviceConfig, seed: int = 1, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Program + drift + forward; returns (drifted tile weights, output)."""
    lin = _digital()
    layer = _analog(cfg, lin)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # HermesNoiseModel's deprecated indexing
        layer.program_analog_weights()
        layer.drift_analog_weights(cfg.t_inference if t is None else t)
    x = torch.randn(8, IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = layer(x)
    weights = next(layer.analog_tiles()).tile.get_weights().clone()
    return weights, y


def test_presets_listed():
    assert PRESETS == sorted(PRESETS)
    for name in ("ideal", "pcm", "hermes-pcm", "rram-wan2022", "rram-cmo", "aihwkit-standard",
                 "gaussian-2", "gaussian-5", "gaussian-10"):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_exercised(name):
    cfg = load_device_config(name)
    assert cfg.name == name and cfg.source and cfg.modelled_nonidealities() is not None
    assert (PRESET_DIR / f"{name}.yaml").read_text().startswith("#"), "needs a source comment"
    assert cfg.rpu_config() is not cfg.rpu_config()  # fresh each call
    _, y = _run(cfg)
    assert y.shape == (8, OUT) and torch.isfinite(y).all()
    # the stacked engine runs every preset in full (C++-only forward non-idealities included)
    from romer_aihwkit.analog.reference import ReferenceStore
    from romer_aihwkit.analog.stacked import AnalogStack, unsupported_reason

    assert unsupported_reason(cfg.rpu_config()) is None
    stack = AnalogStack(_digital().weight.detach()[None].clone(), ["m"], cfg.rpu_config(), "expert",
                        ReferenceStore("memory"), "k")
    stack.program(1, cfg.t_inference)
    assert torch.isfinite(stack.mvm(0, torch.randn(8, IN))).all()
    assert cfg.to_dict()["name"] == name
    assert DeviceConfig.from_dict(cfg.to_dict()) == cfg


def test_ideal_reproduces_digital():
    lin = _digital()
    layer = _analog(load_device_config("ideal"), lin)
    layer.program_analog_weights()
    layer.drift_analog_weights(3600.0)
    x = torch.randn(16, IN)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=1e-5)


def test_pcm_differs_from_digital_and_is_seeded():
    cfg = load_device_config("pcm")
    w1, y1 = _run(cfg, seed=5)
    w2, _ = _run(cfg, seed=5)
    w3, _ = _run(cfg, seed=6)
    torch.testing.assert_close(w1, w2)  # same seed, same chip instance
    assert not torch.allclose(w1, w3)
    x = torch.randn(8, IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _digital()(x)
    assert (y1 - ref).norm() / ref.norm() > 0.01


def test_read_noise_scale_reaches_the_noise_model():
    base = load_device_config("pcm").replace(drift_compensation="none")
    assert base.rpu_config().noise_model.read_noise_scale == 1.0
    w_on, _ = _run(base, seed=3)
    w_off, _ = _run(base.replace(read_noise_scale=0.0), seed=3)
    assert not torch.allclose(w_on, w_off)


def test_torch_tile_rejects_forward_w_noise():
    """Why read noise is not forward.w_noise: AIHWKit's torch tile refuses it (DESIGN section 2)."""
    from aihwkit.exceptions import ConfigError
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.parameters.enums import WeightNoiseType

    rpu = load_device_config("pcm").rpu_config()
    rpu.forward.w_noise, rpu.forward.w_noise_type = 0.0175, WeightNoiseType.PCM_READ
    with pytest.raises(ConfigError, match="w_noise"):
        AnalogLinear(IN, OUT, bias=False, rpu_config=rpu)
    with pytest.raises(DeviceConfigError, match="w_noise_type"):
        load_device_config("pcm").replace(w_noise=0.0175)
    cfg = load_device_config("pcm").replace(w_noise=0.0175, w_noise_type="pcm_read")
    assert cfg.rpu_config().forward.w_noise == 0.0175  # the stacked engine reads it from here


def test_aihwkit_engine_needs_cxx_tiles_for_cxx_only_settings(monkeypatch):
    """engine='aihwkit' takes AIHWKit's C++ tiles for w_noise / IR drop and refuses clearly where they do not run."""
    from romer_aihwkit.devices import mapping
    from romer_aihwkit.errors import EngineError

    cfg = load_device_config("aihwkit-standard")
    assert cfg.cxx_only_forward() == ["w_noise=0.0175", "ir_drop=1"]
    assert type(load_device_config("pcm").aihwkit_rpu_config()).__name__ == "TorchInferenceRPUConfig"
    monkeypatch.setattr(mapping, "cxx_tiles_available", lambda: "ImportError: no rpu_base")
    with pytest.raises(EngineError, match=r"w_noise=0.0175, ir_drop=1.*no rpu_base.*make reference-env"):
        cfg.aihwkit_rpu_config()
    monkeypatch.setattr(mapping, "cxx_tiles_available", lambda: None)
    rpu = cfg.aihwkit_rpu_config()
    assert type(rpu).__name__ == "InferenceRPUConfig"
    assert (rpu.forward.w_noise, rpu.forward.ir_drop, rpu.forward.inp_res) == (0.0175, 1.0, 254.0)
    with pytest.raises(DeviceConfigError, match="inp_bound"):  # RPUCuda: noise management needs inp_bound 1
        cfg.replace(inp_bound=2.0).aihwkit_rpu_config()


def test_rpu_config_mapping():
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    rpu = load_device_config("pcm").rpu_config()
    assert isinstance(rpu, TorchInferenceRPUConfig)
    assert isinstance(rpu.noise_model, PCMLikeNoiseModel)
    assert isinstance(rpu.drift_compensation, GlobalDriftCompensation)
    assert rpu.forward.inp_res == 254 and rpu.forward.out_res == 254
    assert rpu.forward.out_noise == pytest.approx(0.04)
    assert rpu.mapping.max_input_size == 512
    assert load_device_config("ideal").rpu_config().forward.is_perfect
    per_col = load_device_config("pcm").replace(drift_compensation="per-column").rpu_config()
    assert type(per_col.drift_compensation).__name__ == "PerColumnDriftCompensation"


def test_wan2022_times_match_aihwkit():
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel

    assert sorted(ReRamWan2022NoiseModel(g_max=40.0).coeff_dic) == list(WAN2022_T_INFERENCE)


def test_wan2022_t_inference():
    cfg = load_device_config("rram-wan2022")
    assert cfg.t_inference in WAN2022_T_INFERENCE
    with pytest.raises(ValueError, match=r"3600.*1, 86400, 172800"):
        cfg.check_t_inference(3600)
    with pytest.raises(DeviceConfigError, match="t_inference"):
        cfg.replace(t_inference=3600.0)
    for t in (1, 86400, 172800):
        assert cfg.check_t_inference(t) == float(t)
    _run(cfg, t=1.0)  # and AIHWKit accepts it
    with pytest.raises(ValueError, match=">= 0"):
        load_device_config("pcm").check_t_inference(-1.0)


def test_extends_and_override(tmp_path):
    f = tmp_path / "my-pcm.yaml"
    f.write_text("extends: pcm\nout_noise: 0.1\nadc_bits: 6\ninput_range: {enable: true}\n")
    cfg = load_device_config(f)
    base = load_device_config("pcm")
    assert cfg.name == "my-pcm" and cfg.noise_model == "pcm" and cfg.out_noise == 0.1
    assert cfg.adc_bits == 6 and cfg.rpu_config().forward.out_res == 62
    assert cfg.input_range.enable and cfg.input_range.init_value == base.input_range.init_value
    base_file = tmp_path / "sub" / "base.yaml"
    base_file.parent.mkdir()
    base_file.write_text("extends: pcm\nout_noise: 0.2\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: sub/base.yaml\nname: child\n")
    assert load_device_config(str(child)).out_noise == 0.2


@pytest.mark.parametrize(
    ("text", "field"),
    [("extends: pcm\nout_nosie: 0.1\n", "out_nosie"),
     ("extends: pcm\nout_noise: loud\n", "out_noise"),
     ("extends: pcm\ndac_bits: 8.5\n", "dac_bits"),
     ("extends: pcm\nnoise_model: memristor\n", "noise_model"),
     ("extends: pcm\ninput_range: {enabled: true}\n", "input_range")],
)
def test_bad_field_names_field_and_file(tmp_path, text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(DeviceConfigError) as info:
        load_device_config(f)
    assert isinstance(info.value, ValueError)
    assert field in str(info.value) and str(f) in str(info.value)
    assert info.value.field == field


def test_missing_file_and_unknown_preset(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_device_config(missing)
    with pytest.raises(ValueError) as info:
        load_device_config("pcmm")
    for name in PRESETS:
        assert name in str(info.value)


def test_validation_rules():
    cfg = load_device_config("pcm")
    assert load_device_config(cfg) is cfg
    with pytest.raises(DeviceConfigError, match="noise_level"):
        cfg.replace(noise_model="gaussian")
    assert cfg.replace(noise_model="gaussian", noise_level=0.03).noise_level == 0.03
    with pytest.raises(DeviceConfigError, match="out_bound"):
        cfg.replace(out_bound=None)
    with pytest.raises(DeviceConfigError, match="g_max"):
        load_device_config("hermes-pcm").replace(g_max=25.0)
    with pytest.raises(DeviceConfigError, match="read_noise_scale"):
        load_device_config("rram-wan2022").replace(read_noise_scale=2.0)
    assert "per-MVM" in " ".join(cfg.unmodelled_nonidealities())
