"""The device-config schema: :class:`DeviceConfig` fields and their validation.

A :class:`DeviceConfig` describes one analog in-memory chip, composed of four parts
(:mod:`.parts`): **noise** (which AIHWKit noise model programs and drifts the conductances),
**periphery** (DAC/ADC resolution, bounds, output noise, forward non-idealities), **mapping**
(``g_max``, tile size, weight remapping and clipping, input ranges) and **drift** (inference
time, compensation). Every instance is validated when built: types, physical ranges and choices
(:mod:`.fields`), then each part's rules (:mod:`.parts`); each error names the field (and the
file, when loaded from YAML). The mapping onto AIHWKit lives in :mod:`.mapping`, the prose in
:mod:`.describe`, YAML reading in :mod:`.loading`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DeviceConfigError
from . import describe, mapping, parts
from .fields import (
    FIELD_CHOICES,
    FIELD_RANGES,
    NOISE_MODELS,
    _check_bool,
    _check_choice,
    _check_int,
    _check_number,
    _quote,
    _show,
)

if TYPE_CHECKING:  # pragma: no cover
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

__all__ = [
    "DeviceConfig",
    "FIELD_CHOICES",
    "FIELD_RANGES",
    "InputRangeConfig",
    "NOISE_MODELS",
]

_NUMBERS = ("prog_noise_scale", "read_noise_scale", "drift_scale", "out_noise", "t_inference", "nm_thres",
            "inp_noise", "w_noise", "ir_drop", "ir_drop_g_ratio", "out_nonlinearity", "slope_calibration", "r_series")
_OPTIONAL_NUMBERS = ("noise_level", "g_max", "inp_bound", "out_bound", "weight_clip_value")


@dataclass(frozen=True)
class InputRangeConfig:
    """Static input range of each tile (AIHWKit ``rpu_config.pre_post.input_range``).

    With ``enable`` the input of a tile is clipped to ``[-r, r]`` and divided by ``r`` before the
    DAC, replacing the dynamic per-token scaling (noise management). The range ``r`` is per tile;
    post-training it is set by calibration (``aihwkit.inference.calibration.calibrate_input_ranges``,
    the static-input-range baseline), otherwise it stays ``init_value``.
    """

    enable: bool = False
    """Whether tiles use a static input range."""

    init_value: float = 3.0
    """Initial range ``r`` (in units of the layer input) before any calibration."""

    learn_input_range: bool = False
    """Make ``r`` a trainable parameter (only matters for hardware-aware training)."""

    init_from_data: int = 0
    """Number of training-mode batches used by AIHWKit to initialise ``r`` from data (0: off)."""

    init_std_alpha: float = 3.0
    """Initialisation from data sets ``r`` to this many standard deviations of the input."""

    def __post_init__(self) -> None:
        _check_bool(self, "enable", "input_range.enable")
        _check_bool(self, "learn_input_range", "input_range.learn_input_range")
        _check_number(self, "init_value", "input_range.init_value")
        _check_int(self, "init_from_data", "input_range.init_from_data")
        _check_number(self, "init_std_alpha", "input_range.init_std_alpha")

    @classmethod
    def from_value(cls, value: Any) -> InputRangeConfig:
        """Build from an ``InputRangeConfig``, a mapping (YAML) or ``None`` (disabled)."""
        if value is None:
            return cls()
        if isinstance(value, InputRangeConfig):
            return value
        if not isinstance(value, dict):
            raise DeviceConfigError(
                f"must be a mapping of {_field_names(cls)}, got {type(value).__name__}",
                field="input_range",
            )
        unknown = sorted(str(k) for k in set(value) - set(_field_names(cls)))
        if unknown:
            raise DeviceConfigError(
                f"unknown key(s) {_quote(unknown)}; known: {_field_names(cls)}", field="input_range"
            )
        return cls(**value)


@dataclass(frozen=True)
class DeviceConfig:
    """One analog chip: its noise, periphery, mapping and drift parts (:data:`.parts.PARTS`).

    The fields are flat, as in the YAML files; :meth:`part` gives one part's values. Construct through :func:`load_device_config` (presets or YAML) or directly; every instance is
    validated in ``__post_init__`` and :meth:`replace` re-validates. Defaults describe an ideal
    chip, so every non-ideality of a preset is written out in its YAML.
    """

    name: str
    """Short name (the preset name or the YAML file's stem)."""

    description: str = ""
    """One line saying what the config models."""

    source: str = ""
    """Where the numbers come from (papers, AIHWKit classes and presets)."""

    noise_model: str = "none"
    """AIHWKit noise model: one of :data:`NOISE_MODELS`. It applies programming noise at
    ``program_analog_weights()`` and drift plus accumulated read noise at
    ``drift_analog_weights(t)``, baked into the tile weights (static per chip instance)."""

    noise_level: float | None = None
    """For ``gaussian`` only: programming-noise std per device as a fraction of ``g_max``
    (0.05 = 5 %); required there, must be ``None`` otherwise."""

    g_max: float | None = None
    """Maximal conductance in uS that the largest |weight| of a tile maps to; ``None`` = the noise
    model's own default (pcm 25, hermes-pcm 20.7, rram-wan2022 25, rram-cmo 88.2, gaussian 25)."""

    prog_noise_scale: float = 1.0
    """Multiplier of the noise model's programming noise (``noise_scale`` for rram-wan2022,
    where it scales all of that model's noise). Must be 1.0 for ``none``."""

    read_noise_scale: float = 1.0
    """Multiplier of the noise model's accumulated (1/f) read noise at ``t_inference``
    (pcm, hermes-pcm, rram-cmo). Must be 1.0 for models without that term."""

    drift_scale: float = 1.0
    """Multiplier of the noise model's drift (pcm, hermes-pcm, rram-cmo). Must be 1.0 for models
    without that term."""

    drift_compensation: str = "none"
    """``none``, ``global`` (AIHWKit ``GlobalDriftCompensation``: one output scale per tile from a
    read-out at drift time) or ``per-column`` (``PerColumnDriftCompensation``)."""

    dac_bits: int | None = None
    """Input DAC resolution in bits (8 -> ``forward.inp_res = 254`` levels); ``None`` = none."""

    adc_bits: int | None = None
    """Output ADC resolution in bits (8 -> ``forward.out_res = 254``); ``None`` = none."""

    inp_bound: float | None = None
    """Input clipping bound after input scaling (``forward.inp_bound``); ``None`` = no clipping.
    Required when ``dac_bits`` is set (it is the DAC range)."""

    out_bound: float | None = None
    """Output clipping bound (``forward.out_bound``, in units of an all-on input times max
    weight); ``None`` = no clipping. Required when ``adc_bits`` is set (it is the ADC range)."""

    out_noise: float = 0.0
    """Std of additive Gaussian output noise per MVM (``forward.out_noise``), resampled every
    forward, in the same normalised output units as ``out_bound``."""

    noise_management: str = "abs_max"
    """Input scaling before the DAC (``forward.noise_management``): ``abs_max`` scales each input
    vector by its abs-max, ``max`` by its max, ``constant`` by the constant ``nm_thres`` (1 when 0:
    AIHWKit's ``StandardHWATrainingPreset``, whose inputs are scaled by static input ranges
    first), ``none`` not at all."""

    nm_thres: float = 0.0
    """Noise-management threshold (``forward.nm_thres``): ``abs_max`` / ``max`` scale by at most
    this value, ``constant`` by exactly it; 0 = no threshold."""

    inp_noise: float = 0.0
    """Std of Gaussian noise added to every DAC output, after the input clip (``forward.inp_noise``),
    resampled every MVM. Simulated by the stacked engine and AIHWKit's C++ tiles."""

    w_noise: float = 0.0
    """Per-MVM weight read noise (``forward.w_noise``): output-referred Gaussian noise, resampled
    every MVM, of std ``w_noise * sqrt(sum_j |w_ij| x_j^2)`` (``pcm_read``) or ``w_noise * ||x||``
    (``additive_constant``), in tile units. Simulated by the stacked engine and AIHWKit's C++ tiles."""

    w_noise_type: str = "none"
    """``pcm_read`` or ``additive_constant`` (``forward.w_noise_type``); ``none`` with ``w_noise`` 0."""

    ir_drop: float = 0.0
    """IR drop along the input lines (``forward.ir_drop``, a scale of the physical wire resistance):
    a deterministic, input- and weight-dependent loss of each output, as RPUCuda's ``applyIrDrop``."""

    ir_drop_g_ratio: float = 1.0 / 0.35 / 5e-6
    """Wire conductance from one cell to the next over the device's maximal conductance
    (``forward.ir_drop_g_ratio``; AIHWKit's default: 0.35 Ohm wires, 5 uS g_max)."""

    out_nonlinearity: float = 0.0
    """S-shaped output non-linearity ``y / (1 + n |y|)`` with ``n = out_nonlinearity / out_bound``
    (``forward.out_nonlinearity``), before output noise and ADC."""

    slope_calibration: float = 0.0
    """Calibrated slope of the non-linearity / series resistance: the fraction of the output range
    where the slope is 1 (``forward.slope_calibration``); 0 = uncalibrated."""

    r_series: float = 0.0
    """Series resistance of the output lines, as a fraction of the total output current
    (``forward.r_series``; voltage offsets 0, AIHWKit's implicit reference line ``v_offset_w_min = -1``)."""

    bound_management: str = "none"
    """``iterative``: halve the input scale and repeat when the output clips
    (``forward.bound_management``); ``none``: clip."""

    max_input_size: int = 512
    """Rows of one physical tile (``mapping.max_input_size``); larger layers are split. 0 = no
    limit."""

    max_output_size: int = 512
    """Columns of one physical tile (``mapping.max_output_size``). 0 = no limit."""

    weight_remap: str = "none"
    """Map weights onto the conductance range when they are set: ``layerwise_symmetric`` (abs-max
    of the matrix -> 1) or ``channelwise_symmetric`` (abs-max of each output -> 1, the scale kept
    as a digital output scale); sets ``mapping.weight_scaling_omega/columnwise`` and
    ``remap.type``."""

    weight_clip: str = "none"
    """``fixed`` (clip |w| at ``weight_clip_value``) or ``layer_gaussian`` (clip at
    ``weight_clip_value`` standard deviations of the layer, default 2.5): AIHWKit's
    ``rpu_config.clip``, which AIHWKit applies in ``tile.post_update_step()``."""

    weight_clip_value: float | None = None
    """Threshold for ``weight_clip`` (see there)."""

    input_range: InputRangeConfig = field(default_factory=InputRangeConfig)
    """Static input range settings (see :class:`InputRangeConfig`)."""

    t_inference: float = 3600.0
    """Default time in seconds between programming and inference (drift time)."""

    allowed_t_inference: tuple[float, ...] | None = None
    """If set, the only inference times this device supports (rram-wan2022 has data for
    1, 86400 and 172800 s only and enforces that even when unset)."""

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        for name in parts.IDENTITY:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DeviceConfigError(f"must be a string, got {_show(value)}", field=name)
        if not self.name.strip():
            raise DeviceConfigError("must not be empty", field="name")
        for name, choices in FIELD_CHOICES.items():
            _check_choice(self, name, choices)  # noise_model first: the part checks read its table entry
        for name in _OPTIONAL_NUMBERS:
            _check_number(self, name, optional=True)
        for name in _NUMBERS:
            _check_number(self, name)
        for name in ("dac_bits", "adc_bits"):
            _check_int(self, name, optional=True)
        for name in ("max_input_size", "max_output_size"):
            _check_int(self, name)
        object.__setattr__(self, "input_range", InputRangeConfig.from_value(self.input_range))
        parts.check_noise(self)
        parts.check_periphery(self)
        parts.check_mapping(self)
        parts.check_drift(self)

    # ------------------------------------------------------------------ public API
    def part(self, name: str) -> dict[str, Any]:
        """One part's field values (``noise``, ``periphery``, ``mapping`` or ``drift``; see :mod:`.parts`).

        Raises:
            DeviceConfigError: For an unknown part.
        """
        if name not in parts.PARTS:
            raise DeviceConfigError(f"unknown part; parts: {list(parts.PARTS)}", field=str(name)[:60])
        return {key: getattr(self, key) for key in parts.PARTS[name]}

    def check_t_inference(self, t_inference: float) -> float:
        """Check that this device can be drifted to ``t_inference`` seconds.

        Args:
            t_inference: Seconds between the end of programming and inference.

        Returns:
            ``t_inference`` as a float.

        Raises:
            InputError: (a ``ValueError``) If it is not a number in [0, 10 years], or not one of
                the times the device has data for (``allowed_t_inference``; rram-wan2022: 1 s,
                1 day, 2 days).
        """
        return parts.check_t_inference(self, t_inference)

    def content_hash(self) -> str:
        """Hash of the simulated device: every field except :data:`.parts.IDENTITY` (16 hex digits)."""
        data = self.to_dict()
        for key in parts.IDENTITY:
            data.pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def replace(self, **overrides: Any) -> DeviceConfig:
        """Return a validated copy with some fields changed.

        Raises:
            DeviceConfigError: For an unknown field or an invalid value.
        """
        _check_known_fields(overrides)
        if isinstance(overrides.get("input_range"), dict):
            merged = dataclasses.asdict(self.input_range) | overrides["input_range"]
            overrides["input_range"] = InputRangeConfig.from_value(merged)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready dict of all fields (``from_dict`` reads it back)."""
        data = dataclasses.asdict(self)
        if data["allowed_t_inference"] is not None:
            data["allowed_t_inference"] = list(data["allowed_t_inference"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> DeviceConfig:
        """Build and validate a config from a plain mapping.

        Args:
            data: Field values (as in a YAML file, without ``extends``).
            path: Where the data came from, named in error messages.

        Raises:
            DeviceConfigError: Unknown field or invalid value; names the field and ``path``.
        """
        try:
            if not isinstance(data, dict):
                raise DeviceConfigError(f"must be a mapping of fields, got {_show(data)}")
            _check_known_fields(data)
            if "name" not in data:
                raise DeviceConfigError("is required", field="name")
            return cls(**data)
        except DeviceConfigError as exc:
            raise (exc.with_path(path) if path is not None else exc) from None

    # ------------------------------------------------------------------ AIHWKit mapping and prose
    def noise_model_object(self) -> BaseNoiseModel:
        """A fresh AIHWKit noise model instance for this config (see :func:`.mapping.noise_model_object`)."""
        return mapping.noise_model_object(self)

    def rpu_config(self) -> TorchInferenceRPUConfig:
        """A fresh :class:`~aihwkit.simulator.configs.TorchInferenceRPUConfig` for this device (see :mod:`.mapping`).

        Raises:
            aihwkit.exceptions.ConfigError: Never for a validated config (tests build every preset).
        """
        return mapping.rpu_config(self)

    def is_ideal_periphery(self) -> bool:
        """True when the MVM periphery adds nothing (AIHWKit ``forward.is_perfect``)."""
        return mapping.is_ideal_periphery(self)

    def cxx_only_forward(self) -> list[str]:
        """The forward non-idealities set here that AIHWKit's torch tiles reject (its C++ tiles and the
        stacked engine simulate them); see :func:`.mapping.cxx_only_forward`."""
        return mapping.cxx_only_forward(self)

    def torch_tile_subset(self) -> DeviceConfig:
        """This config with the C++-only forward non-idealities off (what AIHWKit's torch tiles run)."""
        return self.replace(**mapping.CXX_FORWARD_OFF) if self.cxx_only_forward() else self

    def aihwkit_rpu_config(self) -> Any:
        """The rpu_config for ``engine="aihwkit"`` (see :func:`.mapping.aihwkit_rpu_config`)."""
        return mapping.aihwkit_rpu_config(self)

    def modelled_nonidealities(self) -> list[str]:
        """What this config simulates, one item per effect (see :mod:`.describe`)."""
        return describe.modelled_nonidealities(self)

    def aihwkit_deviations(self) -> list[str]:
        """Where this config departs from AIHWKit's own defaults (shown by ``devices show``)."""
        return describe.aihwkit_deviations(self)

    def unmodelled_nonidealities(self) -> list[str]:
        """Effects this config does *not* simulate (limits of AIHWKit's torch tiles or choice)."""
        return describe.unmodelled_nonidealities(self)


# ---------------------------------------------------------------------- helpers
def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _check_known_fields(data: dict[str, Any]) -> None:
    known = _field_names(DeviceConfig)
    for key in data:
        if key in known:
            continue
        hint = difflib.get_close_matches(str(key), known, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DeviceConfigError(
            f"unknown field{did_you_mean}; `romer-aihwkit devices show pcm` lists all {len(known)} fields with "
            "their ranges", field=str(key)[:60]
        )
