"""The parts a :class:`~romer_aihwkit.devices.DeviceConfig` is composed of, and each part's rules.

Like AIHWKit's ``rpu_config`` (``noise_model``, ``forward``, ``mapping``, ``drift_compensation``),
a device config is four parts plus its identity (``name``, ``description``, ``source``):

- **noise**: the AIHWKit noise model that programs and drifts the conductances, and its scales;
- **periphery**: DAC/ADC, bounds, output noise, noise management and the forward non-idealities
  simulated per MVM (``inp_noise``, ``w_noise``, ``ir_drop``, ``out_nonlinearity``, ``r_series``);
- **mapping**: how weights become conductances (``g_max``, tile size, remapping, clipping, static
  input ranges);
- **drift**: the inference time and drift compensation.

The YAML format and :class:`DeviceConfig` keep one flat namespace of fields (``config.out_noise``),
which :data:`PARTS` groups; the rules that tie a part's fields together live here, one function per
part, and :meth:`DeviceConfig.part` gives one part's values. A new forward non-ideality is a field
of ``DeviceConfig``, an entry of :data:`PARTS` ``["periphery"]`` and its rule in
:func:`check_periphery`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import DeviceConfigError, InputError
from .fields import FIELD_RANGES, TEN_YEARS, _fmt_times, _show, _yaml_number_hint
from .noise_models import NOISE_MODEL_TABLE, SCALE_FIELDS, noise_model_spec

if TYPE_CHECKING:  # pragma: no cover
    from .schema import DeviceConfig

__all__ = ["IDENTITY", "PARTS", "check_drift", "check_mapping", "check_noise", "check_periphery",
           "check_t_inference"]

IDENTITY = ("name", "description", "source")
"""Fields that name and document a config; they do not change what it simulates."""

PARTS: dict[str, tuple[str, ...]] = {
    "noise": ("noise_model", "noise_level", "prog_noise_scale", "read_noise_scale", "drift_scale"),
    "periphery": ("dac_bits", "adc_bits", "inp_bound", "out_bound", "out_noise", "noise_management", "nm_thres",
                  "inp_noise", "w_noise", "w_noise_type", "ir_drop", "ir_drop_g_ratio", "out_nonlinearity",
                  "slope_calibration", "r_series", "bound_management"),
    "mapping": ("g_max", "max_input_size", "max_output_size", "weight_remap", "weight_clip", "weight_clip_value",
                "input_range"),
    "drift": ("drift_compensation", "t_inference", "allowed_t_inference"),
}
"""Every physical field of a device config, by part (with :data:`IDENTITY`: every field)."""


def check_noise(config: DeviceConfig) -> None:
    """The noise model's table entry decides which of ``noise_level`` and the scales apply."""
    model = config.noise_model
    spec = noise_model_spec(model)
    if spec.needs_noise_level and config.noise_level is None:
        raise DeviceConfigError(f"noise_model {model!r} needs noise_level (fraction of g_max, e.g. 0.05)",
                                field="noise_level")
    if not spec.needs_noise_level and config.noise_level is not None:
        users = " / ".join(repr(n) for n, s in NOISE_MODEL_TABLE.items() if s.needs_noise_level)
        raise DeviceConfigError(f"only applies to noise_model {users} (this is {model!r}); set it to null",
                                field="noise_level")
    if "prog_noise_scale" not in spec.scales and config.prog_noise_scale != 1.0:
        raise DeviceConfigError(f"noise_model {model!r} has no programming noise to scale", field="prog_noise_scale")
    for name in SCALE_FIELDS[1:]:
        if name not in spec.scales and getattr(config, name) != 1.0:
            having = ", ".join(n for n, s in NOISE_MODEL_TABLE.items() if name in s.scales)
            raise DeviceConfigError(f"noise_model {model!r} has no such term (only {having} do); leave it at 1.0",
                                    field=name)


def check_periphery(config: DeviceConfig) -> None:
    """Converters need their range; each forward non-ideality needs its companion setting."""
    if config.dac_bits is not None and config.inp_bound is None:
        raise DeviceConfigError("dac_bits needs inp_bound (the DAC range)", field="inp_bound")
    if config.adc_bits is not None and config.out_bound is None:
        raise DeviceConfigError("adc_bits needs out_bound (the ADC range)", field="out_bound")
    if config.w_noise > 0.0 and config.w_noise_type == "none":
        raise DeviceConfigError("w_noise > 0 needs w_noise_type 'pcm_read' or 'additive_constant'",
                                field="w_noise_type")
    if config.w_noise == 0.0 and config.w_noise_type != "none":
        raise DeviceConfigError(f"w_noise_type {config.w_noise_type!r} needs w_noise > 0 (or set it to 'none')",
                                field="w_noise")
    if config.slope_calibration > 0.0 and config.out_nonlinearity == 0.0 and config.r_series == 0.0:
        raise DeviceConfigError("calibrates out_nonlinearity / r_series: set one of them, or leave it at 0",
                                field="slope_calibration")


def check_mapping(config: DeviceConfig) -> None:
    """``g_max`` within what the noise model is characterised for; clipping needs its threshold."""
    spec = noise_model_spec(config.noise_model)
    if spec.g_max_max is not None and config.g_max is not None and config.g_max > spec.g_max_max:
        raise DeviceConfigError(f"{spec.aihwkit_class} is characterised up to {spec.g_max_max} uS, got {config.g_max}",
                                field="g_max")
    if spec.g_min is not None and config.g_max is not None and config.g_max <= spec.g_min:
        raise DeviceConfigError(f"{spec.aihwkit_class} needs g_max above its g_min of {spec.g_min} uS, "
                                f"got {config.g_max}", field="g_max")
    if config.weight_clip == "fixed" and config.weight_clip_value is None:
        raise DeviceConfigError("weight_clip 'fixed' needs weight_clip_value", field="weight_clip_value")
    if config.weight_clip == "none" and config.weight_clip_value is not None:
        raise DeviceConfigError("set weight_clip to 'fixed' or 'layer_gaussian' to use it", field="weight_clip_value")


def check_drift(config: DeviceConfig) -> None:
    """``allowed_t_inference`` (normalised to a sorted tuple of floats) and ``t_inference`` within it."""
    allowed = config.allowed_t_inference
    if allowed is not None:
        object.__setattr__(config, "allowed_t_inference", _allowed_times(config.noise_model, allowed))
    try:
        check_t_inference(config, config.t_inference)
    except ValueError as exc:
        raise DeviceConfigError(str(exc), field="t_inference") from None


def _allowed_times(noise_model: str, allowed: Any) -> tuple[float, ...]:
    if isinstance(allowed, (str, bytes)) or not isinstance(allowed, (list, tuple)):
        raise DeviceConfigError(f"must be a list of times in seconds or null, got {_show(allowed)}",
                                field="allowed_t_inference")
    values = []
    low, high, unit = FIELD_RANGES["allowed_t_inference"]
    for item in allowed:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not (
                math.isfinite(item) and low <= item <= high):
            raise DeviceConfigError(f"entries must be numbers in [{low:g}, {high:g}] ({unit}), got {_show(item)}"
                                    f"{_yaml_number_hint(item)}", field="allowed_t_inference")
        values.append(float(item))
    if not values:
        raise DeviceConfigError("must not be empty (use null for any time)", field="allowed_t_inference")
    spec = noise_model_spec(noise_model)
    if spec.allowed_t_inference is not None:
        bad = [t for t in values if t not in spec.allowed_t_inference]
        if bad:
            raise DeviceConfigError(f"{bad} not supported by {spec.aihwkit_class}, which has data for "
                                    f"{_fmt_times(spec.allowed_t_inference)} only", field="allowed_t_inference")
    return tuple(sorted(set(values)))


def check_t_inference(config: DeviceConfig, t_inference: float) -> float:
    """See :meth:`DeviceConfig.check_t_inference`."""
    if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float)):
        raise InputError(f"t_inference must be a number of seconds, got {_show(t_inference)}")
    t = float(t_inference)
    if not math.isfinite(t) or not 0 <= t <= TEN_YEARS:
        raise InputError(f"t_inference must be a finite number of seconds >= 0 and <= {TEN_YEARS:g} "
                         f"(10 years), got {t_inference}")
    allowed = config.allowed_t_inference
    spec = noise_model_spec(config.noise_model)
    if spec.allowed_t_inference is not None:
        allowed = allowed or spec.allowed_t_inference
        why = f"{spec.aihwkit_class} has measurement data only for"
    else:
        why = "this device config allows only"
    if allowed is not None and t not in allowed:
        raise InputError(f"t_inference={t_inference:g} s is not supported by device config {config.name!r}: "
                         f"{why} t_inference in {_fmt_times(allowed)}")
    return t
