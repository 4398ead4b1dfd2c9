"""Field-level checks of the device-config schema: physical ranges, choices, types.

:data:`FIELD_RANGES` and :data:`FIELD_CHOICES` are the schema's data (``devices show`` prints
them); the ``_check_*`` helpers validate one field of a frozen dataclass in place and raise a
:class:`~romer_aihwkit.errors.DeviceConfigError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import DeviceConfigError
from .noise_models import NOISE_MODEL_TABLE

__all__ = ["FIELD_CHOICES", "FIELD_RANGES", "NOISE_MODELS", "TEN_YEARS"]


class _NoiseModelNames(Mapping[str, str]):
    """Live view of the noise-model table: ``name -> one-line summary``."""

    def __getitem__(self, key: str) -> str:
        return NOISE_MODEL_TABLE[key].summary

    def __iter__(self) -> Iterator[str]:
        return iter(NOISE_MODEL_TABLE)

    def __len__(self) -> int:
        return len(NOISE_MODEL_TABLE)


NOISE_MODELS: Mapping[str, str] = _NoiseModelNames()
"""Accepted ``noise_model`` values and the AIHWKit class each maps to (a view of the noise-model table)."""

DRIFT_COMPENSATIONS = ("none", "global", "per-column")
WEIGHT_REMAPS = ("none", "layerwise_symmetric", "channelwise_symmetric")
WEIGHT_CLIPS = ("none", "fixed", "layer_gaussian")
NOISE_MANAGEMENTS = ("none", "abs_max", "max", "constant")
W_NOISE_TYPES = ("none", "pcm_read", "additive_constant")
BOUND_MANAGEMENTS = ("none", "iterative")

_BITS_RANGE = (2, 24)
TEN_YEARS = 10 * 365 * 86400.0

FIELD_RANGES: dict[str, tuple[float, float, str]] = {
    "noise_level": (0.0, 1.0, "fraction of g_max"),
    "g_max": (1.0, 1000.0, "uS"),
    "prog_noise_scale": (0.0, 10.0, "x the model's noise"),
    "read_noise_scale": (0.0, 10.0, "x the model's noise"),
    "drift_scale": (0.0, 10.0, "x the model's drift"),
    "dac_bits": (float(_BITS_RANGE[0]), float(_BITS_RANGE[1]), "bits"),
    "adc_bits": (float(_BITS_RANGE[0]), float(_BITS_RANGE[1]), "bits"),
    "inp_bound": (1e-3, 100.0, "normalised input"),
    "out_bound": (1e-3, 1000.0, "normalised output"),
    "out_noise": (0.0, 1.0, "normalised output"),
    "nm_thres": (0.0, 1000.0, "layer input units, 0 = off"),
    "inp_noise": (0.0, 1.0, "normalised input (DAC full scale 1)"),
    "w_noise": (0.0, 0.5, "normalised weight (|w| <= 1 after remapping)"),
    "ir_drop": (0.0, 10.0, "x the physical wire resistance"),
    "ir_drop_g_ratio": (1e3, 1e9, "wire conductance per cell / device g_max"),
    "out_nonlinearity": (0.0, 10.0, "output compression at out_bound"),
    "slope_calibration": (0.0, 1.0, "fraction of the output range"),
    "r_series": (0.0, 1.0, "fraction of the output current"),
    "max_input_size": (0.0, 65536.0, "rows, 0 = no limit"),
    "max_output_size": (0.0, 65536.0, "columns, 0 = no limit"),
    "weight_clip_value": (1e-3, 100.0, "|w| or std"),
    "t_inference": (0.0, TEN_YEARS, "s (10 years)"),
    "allowed_t_inference": (0.0, TEN_YEARS, "s, each entry"),
    "input_range.init_value": (1e-3, 100.0, "layer input units"),
    "input_range.init_from_data": (0.0, 1e6, "batches"),
    "input_range.init_std_alpha": (1e-3, 100.0, "std"),
}
"""Physical range ``(low, high, unit)`` of every numeric field, inclusive; ``devices show`` prints them.
The ranges are wide enough for any real device and narrow enough that no value in them overflows
AIHWKit's noise models (e.g. a ``prog_noise_scale`` of 1e308 would)."""


class _FieldChoices(Mapping[str, tuple[str, ...]]):
    """The accepted values of every choice field; ``noise_model`` follows the noise-model table."""

    _FIXED: dict[str, tuple[str, ...]] = {
        "drift_compensation": DRIFT_COMPENSATIONS,
        "weight_remap": WEIGHT_REMAPS,
        "weight_clip": WEIGHT_CLIPS,
        "noise_management": NOISE_MANAGEMENTS,
        "bound_management": BOUND_MANAGEMENTS,
        "w_noise_type": W_NOISE_TYPES,
    }

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return tuple(NOISE_MODEL_TABLE) if key == "noise_model" else self._FIXED[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("noise_model", *self._FIXED))

    def __len__(self) -> int:
        return 1 + len(self._FIXED)


FIELD_CHOICES: Mapping[str, tuple[str, ...]] = _FieldChoices()
"""The accepted values of every choice field."""



def _quote(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so no error echoes a whole file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """``type value`` for messages (the value cut short)."""
    return f"{type(value).__name__} {_quote(value)}"


def _yaml_number_hint(value: Any) -> str:
    """For a string that is a number PyYAML read as text (``1.0e308``, ``1e5``), how to write it."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    text = value.strip()
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    fixed = mantissa + (f"e{exponent}" if exponent else "")
    return (f" (YAML reads {text!r} as text, not a number: PyYAML needs a dot and a signed exponent, "
            f"so write {fixed})")


def _fmt_times(times: tuple[float, ...] | list[float]) -> str:
    return "[" + ", ".join(f"{t:g}" for t in times) + "] s"


def _check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if not isinstance(value, str) or value not in choices:
        raise DeviceConfigError(f"must be one of {list(choices)}, got {_show(value)}", field=name)


def _check_range(value: float, label: str) -> None:
    low, high, unit = FIELD_RANGES[label]
    if not low <= value <= high:
        raise DeviceConfigError(f"must be in [{low:g}, {high:g}] ({unit}), got {value!r}", field=label)


def _check_number(obj: Any, name: str, label: str | None = None, *, optional: bool = False) -> None:
    """A finite number inside the field's physical range (:data:`FIELD_RANGES`)."""
    value = getattr(obj, name)
    label = label or name
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceConfigError(
            f"must be a number{' or null' if optional else ''}, got {_show(value)}{_yaml_number_hint(value)}",
            field=label,
        )
    if not math.isfinite(value):
        raise DeviceConfigError(f"must be finite, got {value!r}", field=label)
    _check_range(float(value), label)
    object.__setattr__(obj, name, float(value))


def _check_int(obj: Any, name: str, label: str | None = None, *, optional: bool = False) -> None:
    """An integer inside the field's physical range (:data:`FIELD_RANGES`)."""
    value = getattr(obj, name)
    label = label or name
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise DeviceConfigError(
            f"must be an integer{' or null' if optional else ''}, got {_show(value)}{_yaml_number_hint(value)}",
            field=label,
        )
    _check_range(float(value), label)


def _check_bool(obj: Any, name: str, label: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise DeviceConfigError(f"must be true or false, got {_show(value)}", field=label)
