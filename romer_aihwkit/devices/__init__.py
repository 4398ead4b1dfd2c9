"""Device configurations: plain, validated data mapped onto AIHWKit's torch inference tiles.

A :class:`DeviceConfig` describes one analog in-memory chip: which AIHWKit noise model programs and
drifts the conductances, the periphery (DAC/ADC resolution, bounds, output noise), tile size,
weight mapping and the default inference time. :meth:`DeviceConfig.rpu_config` turns it into a
fresh :class:`aihwkit.simulator.configs.TorchInferenceRPUConfig`; everything physical is AIHWKit's
own code, nothing here re-implements device physics.

Composed like AIHWKit's configs, one concern per module:

- :mod:`.noise_models`: one table entry per noise model (AIHWKit class, field -> constructor
  mapping, accepted scales and ``g_max``, inference times, what it models, source). Adding a noise
  model touches only this table and a preset YAML.
- :mod:`.schema`: the :class:`DeviceConfig` / :class:`InputRangeConfig` dataclasses, types,
  physical ranges (:data:`FIELD_RANGES`), choices, unknown fields; errors name field and file.
- :mod:`.mapping`: ``DeviceConfig`` -> ``TorchInferenceRPUConfig``.
- :mod:`.describe`: what is and is not modelled, deviations from AIHWKit's defaults.
- :mod:`.loading`: presets and YAML files (``yaml.safe_load`` only, size/depth/alias limits, ``extends:``),
  each distinct file parsed once per process.

Why the torch tiles: AIHWKit's C++ tiles fail with current torch; ``TorchInferenceRPUConfig``
works with every noise model but rejects some non-idealities, in particular per-MVM weight read
noise (``forward.w_noise``), IR drop and SHIFT bound management. Each config reports what it does
and does not model (:meth:`DeviceConfig.modelled_nonidealities`,
:meth:`DeviceConfig.unmodelled_nonidealities`).
"""

from ..errors import DeviceConfigError
from .loading import (
    MAX_EXTENDS_CHAIN,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    PRESET_DIR,
    clear_device_config_cache,
    list_device_configs,
    load_device_config,
)
from .noise_models import NOISE_MODEL_TABLE, WAN2022_T_INFERENCE, NoiseModelSpec, register_noise_model
from .schema import FIELD_CHOICES, FIELD_RANGES, NOISE_MODELS, DeviceConfig, InputRangeConfig

__all__ = [
    "NOISE_MODELS",
    "NOISE_MODEL_TABLE",
    "PRESET_DIR",
    "DeviceConfig",
    "DeviceConfigError",
    "FIELD_CHOICES",
    "FIELD_RANGES",
    "InputRangeConfig",
    "MAX_EXTENDS_CHAIN",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "NoiseModelSpec",
    "WAN2022_T_INFERENCE",
    "clear_device_config_cache",
    "list_device_configs",
    "load_device_config",
    "register_noise_model",
]
