"""Device configurations: plain, validated data mapped onto AIHWKit's torch inference tiles.

A :class:`DeviceConfig` describes one analog in-memory chip: which AIHWKit noise model programs and
drifts the conductances, the periphery (DAC/ADC resolution, bounds, output noise), tile size,
weight mapping and the default inference time. :meth:`DeviceConfig.rpu_config` turns it into a
fresh :class:`aihwkit.simulator.configs.TorchInferenceRPUConfig`; everything physical is AIHWKit's
own code, nothing here re-implements device physics.

Presets are YAML files in ``romer_aihwkit/device_configs/`` (``list_device_configs()``); a user file
may start from one with ``extends: pcm`` and override fields. Files are read with
``yaml.safe_load`` only.

Why the torch tiles: AIHWKit's C++ tiles fail with current torch; ``TorchInferenceRPUConfig``
works with every noise model but rejects some non-idealities, in particular per-MVM weight read
noise (``forward.w_noise``), IR drop and SHIFT bound management. Each config reports what it does
and does not model (:meth:`DeviceConfig.modelled_nonidealities`,
:meth:`DeviceConfig.unmodelled_nonidealities`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from romer_aihwkit.errors import DeviceConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

__all__ = [
    "NOISE_MODELS",
    "PRESET_DIR",
    "DeviceConfig",
    "DeviceConfigError",
    "FIELD_CHOICES",
    "FIELD_RANGES",
    "InputRangeConfig",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "list_device_configs",
    "load_device_config",
]

PRESET_DIR = Path(__file__).resolve().parent / "device_configs"
"""Folder holding the preset YAML files (package data)."""

NOISE_MODELS: dict[str, str] = {
    "none": "StateIndependentNoiseModel with every scale 0 (identity)",
    "pcm": "PCMLikeNoiseModel",
    "hermes-pcm": "HermesNoiseModel",
    "rram-wan2022": "ReRamWan2022NoiseModel",
    "rram-cmo": "ReRamCMONoiseModel",
    "gaussian": "StateIndependentNoiseModel (programming noise only)",
}
"""Accepted ``noise_model`` values and the AIHWKit class each maps to."""

DRIFT_COMPENSATIONS = ("none", "global", "per-column")
WEIGHT_REMAPS = ("none", "layerwise_symmetric", "channelwise_symmetric")
WEIGHT_CLIPS = ("none", "fixed", "layer_gaussian")
NOISE_MANAGEMENTS = ("none", "abs_max", "max")
BOUND_MANAGEMENTS = ("none", "iterative")

WAN2022_T_INFERENCE: tuple[float, ...] = (1.0, 86400.0, 172800.0)
"""The only inference times (s) with data in ``ReRamWan2022NoiseModel``: 1 s, 1 day, 2 days."""

# Models that have their own accumulated read-noise / drift terms with a scale knob.
_HAS_READ_AND_DRIFT_SCALE = ("pcm", "hermes-pcm", "rram-cmo")
_HERMES_G_MAX = 20.7  # uS, largest characterised value for 2 devices per weight (AIHWKit)
_AIHWKIT_G_MAX = {"pcm": 25.0, "hermes-pcm": 20.7, "rram-wan2022": 25.0, "rram-cmo": 88.2, "gaussian": 25.0}
"""g_max (uS) each AIHWKit noise model uses when given none (aihwkit 1.1)."""
_CMO_G_MIN = 9.0  # uS, SingleDeviceConductanceConverter default used by ReRamCMONoiseModel
_BITS_RANGE = (2, 24)
_TEN_YEARS = 10 * 365 * 86400.0

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
    "max_input_size": (0.0, 65536.0, "rows, 0 = no limit"),
    "max_output_size": (0.0, 65536.0, "columns, 0 = no limit"),
    "weight_clip_value": (1e-3, 100.0, "|w| or std"),
    "t_inference": (0.0, _TEN_YEARS, "s (10 years)"),
    "allowed_t_inference": (0.0, _TEN_YEARS, "s, each entry"),
    "input_range.init_value": (1e-3, 100.0, "layer input units"),
    "input_range.init_from_data": (0.0, 1e6, "batches"),
    "input_range.init_std_alpha": (1e-3, 100.0, "std"),
}
"""Physical range ``(low, high, unit)`` of every numeric field, inclusive; ``devices show`` prints them.
The ranges are wide enough for any real device and narrow enough that no value in them overflows
AIHWKit's noise models (e.g. a ``prog_noise_scale`` of 1e308 would)."""

FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "noise_model": tuple(NOISE_MODELS),
    "drift_compensation": DRIFT_COMPENSATIONS,
    "weight_remap": WEIGHT_REMAPS,
    "weight_clip": WEIGHT_CLIPS,
    "noise_management": NOISE_MANAGEMENTS,
    "bound_management": BOUND_MANAGEMENTS,
}
"""The accepted values of every choice field."""

MAX_YAML_BYTES = 64 * 1024
"""Largest device-config YAML file read (a full config is about 2 KiB)."""

MAX_YAML_DEPTH = 4
"""Deepest nesting of mappings/lists accepted in a device-config YAML (a config needs 2)."""

MAX_EXTENDS_CHAIN = 8
"""Longest chain of ``extends:`` files."""


def _bits_to_res(bits: int | None) -> float:
    """AIHWKit's convention: an n-bit converter has 2**n - 2 levels (8 bit -> 254); -1 = off."""
    return -1.0 if bits is None else float(2**bits - 2)


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
    """One analog chip: noise model, periphery, tile size, mapping and inference time.

    Construct through :func:`load_device_config` (presets or YAML) or directly; every instance is
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
    """Dynamic input scaling before the DAC (``forward.noise_management``): ``abs_max`` scales each
    input vector by its abs-max, ``max`` by its max, ``none`` not at all."""

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
        for name in ("name", "description", "source"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DeviceConfigError(f"must be a string, got {_show(value)}", field=name)
        if not self.name.strip():
            raise DeviceConfigError("must not be empty", field="name")
        for name, choices in FIELD_CHOICES.items():
            _check_choice(self, name, choices)

        for name in ("noise_level", "g_max", "inp_bound", "out_bound", "weight_clip_value"):
            _check_number(self, name, optional=True)
        for name in ("prog_noise_scale", "read_noise_scale", "drift_scale", "out_noise", "t_inference"):
            _check_number(self, name)
        for name in ("dac_bits", "adc_bits"):
            _check_int(self, name, optional=True)
        for name in ("max_input_size", "max_output_size"):
            _check_int(self, name)

        object.__setattr__(self, "input_range", InputRangeConfig.from_value(self.input_range))
        self._validate_allowed_t_inference()
        self._validate_combinations()
        try:
            self.check_t_inference(self.t_inference)
        except ValueError as exc:
            raise DeviceConfigError(str(exc), field="t_inference") from None

    def _validate_allowed_t_inference(self) -> None:
        allowed = self.allowed_t_inference
        if allowed is None:
            return
        if isinstance(allowed, (str, bytes)) or not isinstance(allowed, (list, tuple)):
            raise DeviceConfigError(
                f"must be a list of times in seconds or null, got {_show(allowed)}",
                field="allowed_t_inference",
            )
        values = []
        for item in allowed:
            low, high, unit = FIELD_RANGES["allowed_t_inference"]
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not (
                math.isfinite(item) and low <= item <= high
            ):
                raise DeviceConfigError(
                    f"entries must be numbers in [{low:g}, {high:g}] ({unit}), got {_show(item)}"
                    f"{_yaml_number_hint(item)}",
                    field="allowed_t_inference",
                )
            values.append(float(item))
        if not values:
            raise DeviceConfigError("must not be empty (use null for any time)",
                                    field="allowed_t_inference")
        if self.noise_model == "rram-wan2022":
            bad = [t for t in values if t not in WAN2022_T_INFERENCE]
            if bad:
                raise DeviceConfigError(
                    f"{bad} not supported by ReRamWan2022NoiseModel, which has data for "
                    f"{_fmt_times(WAN2022_T_INFERENCE)} only",
                    field="allowed_t_inference",
                )
        object.__setattr__(self, "allowed_t_inference", tuple(sorted(set(values))))

    def _validate_combinations(self) -> None:
        model = self.noise_model
        if model == "gaussian" and self.noise_level is None:
            raise DeviceConfigError(
                "noise_model 'gaussian' needs noise_level (fraction of g_max, e.g. 0.05)",
                field="noise_level",
            )
        if model != "gaussian" and self.noise_level is not None:
            raise DeviceConfigError(
                f"only applies to noise_model 'gaussian' (this is {model!r}); set it to null",
                field="noise_level",
            )
        if model == "none" and self.prog_noise_scale != 1.0:
            raise DeviceConfigError("noise_model 'none' has no programming noise to scale",
                                    field="prog_noise_scale")
        if model not in _HAS_READ_AND_DRIFT_SCALE:
            for name in ("read_noise_scale", "drift_scale"):
                if getattr(self, name) != 1.0:
                    raise DeviceConfigError(
                        f"noise_model {model!r} has no such term (only "
                        f"{', '.join(_HAS_READ_AND_DRIFT_SCALE)} do); leave it at 1.0",
                        field=name,
                    )
        if model == "hermes-pcm" and self.g_max is not None and self.g_max > _HERMES_G_MAX:
            raise DeviceConfigError(
                f"HermesNoiseModel is characterised up to {_HERMES_G_MAX} uS, got {self.g_max}",
                field="g_max",
            )
        if model == "rram-cmo" and self.g_max is not None and self.g_max <= _CMO_G_MIN:
            raise DeviceConfigError(
                f"ReRamCMONoiseModel needs g_max above its g_min of {_CMO_G_MIN} uS, "
                f"got {self.g_max}",
                field="g_max",
            )
        if self.dac_bits is not None and self.inp_bound is None:
            raise DeviceConfigError("dac_bits needs inp_bound (the DAC range)", field="inp_bound")
        if self.adc_bits is not None and self.out_bound is None:
            raise DeviceConfigError("adc_bits needs out_bound (the ADC range)", field="out_bound")
        if self.weight_clip == "fixed" and self.weight_clip_value is None:
            raise DeviceConfigError("weight_clip 'fixed' needs weight_clip_value",
                                    field="weight_clip_value")
        if self.weight_clip == "none" and self.weight_clip_value is not None:
            raise DeviceConfigError("set weight_clip to 'fixed' or 'layer_gaussian' to use it",
                                    field="weight_clip_value")

    # ------------------------------------------------------------------ public API
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
        if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float)):
            raise InputError(f"t_inference must be a number of seconds, got {_show(t_inference)}")
        t = float(t_inference)
        if not math.isfinite(t) or not 0 <= t <= _TEN_YEARS:
            raise InputError(f"t_inference must be a finite number of seconds >= 0 and <= {_TEN_YEARS:g} "
                             f"(10 years), got {t_inference}")
        allowed = self.allowed_t_inference
        if self.noise_model == "rram-wan2022":
            allowed = allowed or WAN2022_T_INFERENCE
            why = "ReRamWan2022NoiseModel has measurement data only for"
        else:
            why = "this device config allows only"
        if allowed is not None and t not in allowed:
            raise InputError(
                f"t_inference={t_inference:g} s is not supported by device config {self.name!r}: "
                f"{why} t_inference in {_fmt_times(allowed)}"
            )
        return t

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

    def noise_model_object(self) -> BaseNoiseModel:
        """A fresh AIHWKit noise model instance for this config."""
        from aihwkit.inference.noise.custom import StateIndependentNoiseModel
        from aihwkit.inference.noise.hermes import HermesNoiseModel
        from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
        from aihwkit.inference.noise.reram import ReRamCMONoiseModel, ReRamWan2022NoiseModel

        scales = dict(
            prog_noise_scale=self.prog_noise_scale,
            read_noise_scale=self.read_noise_scale,
            drift_scale=self.drift_scale,
        )
        model = self.noise_model
        # Never pass prog_coeff_g_max_reference / coeff_g_max_reference: in aihwkit 1.1 passing
        # them leaves the attribute unset and the model fails on first use.
        if model == "pcm":
            return PCMLikeNoiseModel(g_max=self.g_max, **scales)
        if model == "hermes-pcm":
            return HermesNoiseModel(g_max=self.g_max, **scales)
        if model == "rram-wan2022":
            return ReRamWan2022NoiseModel(g_max=self.g_max, noise_scale=self.prog_noise_scale)
        if model == "rram-cmo":
            return ReRamCMONoiseModel(g_max=self.g_max, **scales)
        silent = dict(drift_nu_mean=0.0, drift_nu_std=0.0, read_noise_scale=0.0)
        if model == "gaussian":
            g_max = 25.0 if self.g_max is None else self.g_max
            return StateIndependentNoiseModel(
                g_max=g_max,
                prog_coeff=[float(self.noise_level) * g_max, 0.0, 0.0],
                prog_noise_scale=self.prog_noise_scale,
                **silent,
            )
        # "none": AIHWKit's own model with every term off; programming/drifting is an identity
        # up to float rounding of the weight -> conductance -> weight round trip.
        return StateIndependentNoiseModel(g_max=self.g_max, prog_noise_scale=0.0, **silent)

    def rpu_config(self) -> TorchInferenceRPUConfig:
        """A fresh :class:`~aihwkit.simulator.configs.TorchInferenceRPUConfig` for this device.

        Raises:
            aihwkit.exceptions.ConfigError: Never for a validated config (tests build every preset).
        """
        from aihwkit.inference.compensation.drift import (
            GlobalDriftCompensation,
            PerColumnDriftCompensation,
        )
        from aihwkit.simulator.configs import TorchInferenceRPUConfig
        from aihwkit.simulator.parameters import (
            InputRangeParameter,
            IOParameters,
            MappingParameter,
            PrePostProcessingParameter,
            WeightClipParameter,
            WeightRemapParameter,
        )
        from aihwkit.simulator.parameters.enums import (
            BoundManagementType,
            NoiseManagementType,
            WeightClipType,
            WeightNoiseType,
            WeightRemapType,
        )

        forward = IOParameters(
            is_perfect=self.is_ideal_periphery(),
            inp_res=_bits_to_res(self.dac_bits),
            inp_bound=self.inp_bound if self.inp_bound is not None else 0.0,  # <= 0: no clipping
            inp_noise=0.0,
            out_res=_bits_to_res(self.adc_bits),
            out_bound=self.out_bound if self.out_bound is not None else 0.0,  # <= 0: no clipping
            out_noise=self.out_noise,
            noise_management={
                "none": NoiseManagementType.NONE,
                "abs_max": NoiseManagementType.ABS_MAX,
                "max": NoiseManagementType.MAX,
            }[self.noise_management],
            bound_management={
                "none": BoundManagementType.NONE,
                "iterative": BoundManagementType.ITERATIVE,
            }[self.bound_management],
            w_noise=0.0,
            w_noise_type=WeightNoiseType.NONE,  # rejected by the torch tile
            ir_drop=0.0,  # rejected by the torch tile
        )
        remap_type = {
            "none": WeightRemapType.NONE,
            "layerwise_symmetric": WeightRemapType.LAYERWISE_SYMMETRIC,
            "channelwise_symmetric": WeightRemapType.CHANNELWISE_SYMMETRIC,
        }[self.weight_remap]
        mapping = MappingParameter(
            digital_bias=True,
            weight_scaling_omega=0.0 if self.weight_remap == "none" else 1.0,
            weight_scaling_columnwise=self.weight_remap == "channelwise_symmetric",
            learn_out_scaling=False,
            max_input_size=self.max_input_size,
            max_output_size=self.max_output_size,
        )
        if self.weight_clip == "fixed":
            clip = WeightClipParameter(
                type=WeightClipType.FIXED_VALUE, fixed_value=float(self.weight_clip_value)
            )
        elif self.weight_clip == "layer_gaussian":
            sigma = 2.5 if self.weight_clip_value is None else float(self.weight_clip_value)
            clip = WeightClipParameter(type=WeightClipType.LAYER_GAUSSIAN, sigma=sigma)
        else:
            clip = WeightClipParameter(type=WeightClipType.NONE)
        ir = self.input_range
        pre_post = PrePostProcessingParameter(
            input_range=InputRangeParameter(
                enable=ir.enable,
                init_value=ir.init_value,
                learn_input_range=ir.learn_input_range,
                init_from_data=ir.init_from_data,
                init_std_alpha=ir.init_std_alpha,
            )
        )
        drift_compensation = {
            "none": None,
            "global": GlobalDriftCompensation,
            "per-column": PerColumnDriftCompensation,
        }[self.drift_compensation]
        return TorchInferenceRPUConfig(
            forward=forward,
            mapping=mapping,
            remap=WeightRemapParameter(type=remap_type),
            clip=clip,
            pre_post=pre_post,
            noise_model=self.noise_model_object(),
            drift_compensation=drift_compensation() if drift_compensation else None,
        )

    def is_ideal_periphery(self) -> bool:
        """True when the MVM periphery adds nothing (AIHWKit ``forward.is_perfect``)."""
        return (
            self.dac_bits is None
            and self.adc_bits is None
            and self.out_noise == 0.0
            and self.inp_bound is None
            and self.out_bound is None
        )

    def modelled_nonidealities(self) -> list[str]:
        """What this config simulates, one item per effect (honest and specific)."""
        items: list[str] = []
        model = self.noise_model
        g = f"g_max={self.g_max:g} uS" if self.g_max is not None else "model default g_max"
        if model == "pcm":
            items += [
                f"programming noise: AIHWKit PCMLikeNoiseModel, conductance dependent ({g}, "
                f"x{self.prog_noise_scale:g})",
                f"conductance drift (power law, per-device nu; x{self.drift_scale:g})",
                f"accumulated 1/f read noise up to t_inference (x{self.read_noise_scale:g}), "
                "sampled once at drift_analog_weights(t)",
            ]
        elif model == "hermes-pcm":
            items += [
                f"programming noise: AIHWKit HermesNoiseModel, 2 PCM devices per weight ({g}, "
                f"x{self.prog_noise_scale:g})",
                f"conductance drift measured on HERMES (x{self.drift_scale:g})",
                f"accumulated 1/f read noise up to t_inference (x{self.read_noise_scale:g}), "
                "sampled once at drift_analog_weights(t)",
            ]
        elif model == "rram-wan2022":
            items += [
                f"programming noise: AIHWKit ReRamWan2022NoiseModel polynomial fit ({g}, "
                f"x{self.prog_noise_scale:g})",
                "conductance relaxation at 1 s / 1 day / 2 days (re-sampled around the target at "
                "drift_analog_weights(t))",
            ]
        elif model == "rram-cmo":
            items += [
                f"programming noise: AIHWKit ReRamCMONoiseModel, 1 device per weight ({g}, "
                f"x{self.prog_noise_scale:g})",
                f"conductance decay, mean and spread growing with log t (x{self.drift_scale:g})",
                f"accumulated read noise up to t_inference (x{self.read_noise_scale:g})",
            ]
        elif model == "gaussian":
            items.append(
                f"programming noise: AIHWKit StateIndependentNoiseModel, Gaussian, std "
                f"{100 * float(self.noise_level) * self.prog_noise_scale:g} % of g_max per device "
                "(two devices per weight), no drift, no read noise"
            )
        if self.drift_compensation != "none":
            items.append(f"drift compensation: {self.drift_compensation} (AIHWKit)")
        if self.weight_remap != "none":
            items.append(f"weight remapping: {self.weight_remap} onto the conductance range")
        if self.weight_clip == "fixed":
            items.append(f"weight clipping at |w| <= {self.weight_clip_value:g} "
                         "(applied by tile.post_update_step())")
        elif self.weight_clip == "layer_gaussian":
            sigma = 2.5 if self.weight_clip_value is None else self.weight_clip_value
            items.append(f"weight clipping at {sigma:g} std of the layer "
                         "(applied by tile.post_update_step())")
        if not self.is_ideal_periphery():
            if self.noise_management != "none":
                items.append(f"dynamic input scaling per input vector ({self.noise_management})")
            if self.input_range.enable:
                items.append(f"static input range per tile (init {self.input_range.init_value:g};"
                             " calibrate with calibrate_input_ranges)")
            if self.inp_bound is not None:
                items.append(f"input clipping at {self.inp_bound:g}")
            if self.dac_bits is not None:
                items.append(f"DAC: {self.dac_bits}-bit input quantization "
                             f"({int(_bits_to_res(self.dac_bits))} levels)")
            if self.adc_bits is not None:
                items.append(f"ADC: {self.adc_bits}-bit output quantization "
                             f"({int(_bits_to_res(self.adc_bits))} levels)")
            if self.out_bound is not None:
                items.append(f"output clipping at {self.out_bound:g}"
                             + (" with iterative bound management"
                                if self.bound_management == "iterative" else ""))
            if self.out_noise > 0:
                items.append(f"additive Gaussian output noise, std {self.out_noise:g}, every MVM")
        if self.max_input_size or self.max_output_size:
            items.append(f"tile size {self.max_input_size or 'any'} x "
                         f"{self.max_output_size or 'any'} (larger matrices are split)")
        return items

    def aihwkit_deviations(self) -> list[str]:
        """Where this config departs from AIHWKit's own defaults (shown by ``devices show``).

        Compared with the noise model's default ``g_max`` and, for configs with AIHWKit's hardware
        periphery (DAC/ADC and channelwise remapping), with ``StandardHWATrainingPreset``.
        """
        items: list[str] = []
        default_g_max = _AIHWKIT_G_MAX.get(self.noise_model)
        if self.g_max is not None and default_g_max is not None and self.g_max != default_g_max:
            items.append(f"g_max {self.g_max:g} uS (AIHWKit's {NOISE_MODELS[self.noise_model].split(' ')[0]} "
                         f"default: {default_g_max:g} uS)")
        if self.dac_bits is not None and self.weight_remap == "channelwise_symmetric":
            if self.max_output_size != 0:
                items.append(f"tiles of at most {self.max_output_size} output columns (AIHWKit's "
                             "StandardHWATrainingPreset: 0, no column limit)")
            if self.max_input_size != 512:
                items.append(f"tiles of at most {self.max_input_size} input rows (StandardHWATrainingPreset: 512)")
            items.append("mapping.learn_out_scaling off (StandardHWATrainingPreset: on; it is learned in "
                         "hardware-aware training, which this project does not run)")
            if not self.input_range.enable:
                items.append(f"dynamic input scaling ({self.noise_management}) instead of the preset's static "
                             "input ranges learned in hardware-aware training")
            items.append("no per-MVM weight read noise (StandardHWATrainingPreset: forward.w_noise 0.0175, "
                         "which AIHWKit's torch tiles reject)")
        return items

    def unmodelled_nonidealities(self) -> list[str]:
        """Effects this config does *not* simulate (limits of AIHWKit's torch tiles or choice)."""
        items = [
            "per-MVM short-term weight read noise (forward.w_noise): rejected by AIHWKit's torch "
            "tiles; only the noise model's read noise, sampled once at drift time, is present",
            "IR drop, S-shaped output non-linearity, voltage offsets (not supported by torch tiles)",
            "analog bias (biases stay digital)",
        ]
        if self.noise_model == "rram-wan2022":
            items.append("ReRAM short-term read noise (~1 %, AIHWKit suggests forward.w_noise=0.01"
                         " which torch tiles reject)")
        if self.noise_model in ("none", "gaussian"):
            items.append("drift and accumulated read noise (this noise model has none)")
        if self.dac_bits is None:
            items.append("input (DAC) quantization")
        if self.adc_bits is None:
            items.append("output (ADC) quantization")
        if self.out_noise == 0:
            items.append("output noise")
        return items


# ---------------------------------------------------------------------- loading
def list_device_configs() -> list[str]:
    """Sorted names of the preset device configs shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_device_config(name_or_path: str | Path | DeviceConfig) -> DeviceConfig:
    """Load a preset by name, a YAML file, or pass a :class:`DeviceConfig` through.

    A YAML file holds :class:`DeviceConfig` fields; ``extends: NAME_OR_RELATIVE_PATH`` starts from
    a preset or another file (relative to this one) and the file's fields override it. Without
    ``name`` the file's stem is used.

    Args:
        name_or_path: Preset name (see :func:`list_device_configs`), path to a ``.yaml`` file, or
            a ready config.

    Returns:
        The validated config.

    Raises:
        InputError: (a ``ValueError``) Unknown preset name (the message lists the presets), or an
            ``extends:`` that is absolute or leaves the file's folder.
        FileNotFoundError: A path that does not exist.
        DeviceConfigError: Invalid YAML, unknown field or bad value (names the field and file).
    """
    if isinstance(name_or_path, DeviceConfig):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(
            f"expected a preset name, a path or a DeviceConfig, got {type(name_or_path).__name__}"
        )
    path = _resolve(name_or_path, base_dir=None)
    data = _read_resolved(path, stack=())
    return DeviceConfig.from_dict(data, path=path)


def _resolve(name_or_path: str | Path, base_dir: Path | None) -> Path:
    """Map a preset name or a path to an existing file path.

    With ``base_dir`` (an ``extends:`` inside a file) only preset names and relative paths that stay
    inside ``base_dir`` are accepted.
    """
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or any(
        s in text for s in ("/", "\\")
    ) or text.endswith((".yaml", ".yml"))
    if not looks_like_path:
        preset = PRESET_DIR / f"{text}.yaml"
        if preset.is_file():
            return preset
        local = (base_dir or Path.cwd()) / text
        if local.is_file() and base_dir is None:
            return local
        known = ", ".join(list_device_configs())
        hint = difflib.get_close_matches(text, list_device_configs(), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise InputError(
            f"unknown device config {_quote(text)}.{did_you_mean} Known presets: {known}; "
            "or pass the path to a YAML file."
        )
    path = Path(text).expanduser()
    if base_dir is not None:
        if path.is_absolute() or text.startswith("~"):
            raise InputError(f"must be a preset name or a path relative to the file's folder, got the "
                             f"absolute path {_quote(text)}")
        path = base_dir / path
        try:
            path.resolve().relative_to(base_dir.resolve())
        except ValueError:
            raise InputError(f"{_quote(text)} points outside the file's folder {base_dir}; copy the "
                             "base config next to it or extend a preset") from None
        if path.suffix not in (".yaml", ".yml"):
            raise InputError(f"{_quote(text)} is not a .yaml/.yml file")
    if not path.is_file():
        raise FileNotFoundError(f"device config file not found: {path}")
    return path


def _read_yaml_text(path: Path) -> str:
    """The file's text, refused before parsing if too large, not UTF-8 or not a plain file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DeviceConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if size > MAX_YAML_BYTES:
        raise DeviceConfigError(f"file is {size} bytes; a device config is at most {MAX_YAML_BYTES} bytes",
                                path=path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise DeviceConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if len(raw) > MAX_YAML_BYTES:
        raise DeviceConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceConfigError(f"not UTF-8 text (invalid byte at offset {exc.start}); save the file as UTF-8",
                                path=path) from None


def _check_yaml_structure(text: str, path: Path) -> None:
    """Refuse anchors/aliases (billion laughs) and deep nesting by scanning tokens, before parsing."""
    import yaml

    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise DeviceConfigError(
                    f"YAML anchors and aliases (&/*) are not accepted (line {token.start_mark.line + 1}); write "
                    "the values out", path=path)
            if isinstance(token, (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
                                  yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise DeviceConfigError(
                        f"nested deeper than {MAX_YAML_DEPTH} levels (line {token.start_mark.line + 1}); a device "
                        "config is a flat mapping of fields", path=path)
            elif isinstance(token, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"not valid YAML: {_yaml_problem(exc)}", path=path) from None


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one short line: the problem and where, never the file's content."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_resolved(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    """Read ``path`` and merge it over whatever it ``extends``, recursively."""
    import yaml

    real = path.resolve()
    if real in stack:
        chain = " -> ".join(str(p) for p in (*stack, real))
        raise DeviceConfigError(f"circular 'extends': {chain}", field="extends", path=path)
    if len(stack) >= MAX_EXTENDS_CHAIN:
        raise DeviceConfigError(f"more than {MAX_EXTENDS_CHAIN} files in the 'extends' chain", field="extends",
                                path=path)
    text = _read_yaml_text(path)
    _check_yaml_structure(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"not valid YAML: {_yaml_problem(exc)}", path=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeviceConfigError(f"must be a mapping of fields, got {_show(data)}", path=path)
    data = dict(data)
    parent = data.pop("extends", None)
    if "name" not in data:
        data["name"] = path.stem
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise DeviceConfigError(f"must be a preset name or a relative path, got {_show(parent)}",
                                field="extends", path=path)
    try:
        parent_path = _resolve(parent, base_dir=path.parent)
    except (ValueError, FileNotFoundError) as exc:
        raise DeviceConfigError(str(exc), field="extends", path=path) from None
    base = _read_resolved(parent_path, stack=(*stack, real))
    merged = {**base, **data}
    if isinstance(base.get("input_range"), dict) and isinstance(data.get("input_range"), dict):
        merged["input_range"] = {**base["input_range"], **data["input_range"]}
    return merged


# ---------------------------------------------------------------------- helpers
def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _check_known_fields(data: dict[str, Any]) -> None:
    known = _field_names(DeviceConfig)
    for key in data:
        if key in known:
            continue
        if key == "w_noise":
            raise DeviceConfigError(
                "per-MVM weight read noise (forward.w_noise) is not supported by AIHWKit's "
                "torch tiles (TorchInferenceRPUConfig); read noise is modelled by the noise "
                "model at drift time, scaled by read_noise_scale",
                field=key,
            )
        hint = difflib.get_close_matches(str(key), known, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DeviceConfigError(
            f"unknown field{did_you_mean}; known fields: {', '.join(known)}", field=str(key)[:60]
        )


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
