"""romer-aihwkit: analog in-memory simulation of Hugging Face MoE LLMs with ROMER calibration.

The public API is imported lazily so that ``import romer_aihwkit`` (and the CLI) start fast;
torch, transformers and aihwkit load on first use of a function that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # device configs
    "DeviceConfig": "romer_aihwkit.devices",
    "list_device_configs": "romer_aihwkit.devices",
    "load_device_config": "romer_aihwkit.devices",
    # models and data
    "list_bundled_models": "romer_aihwkit.models",
    "load_bundled_model": "romer_aihwkit.models",
    "load_model": "romer_aihwkit.models",
    "text_blocks": "romer_aihwkit.data",
    # analog conversion
    "convert_to_analog_moe": "romer_aihwkit.analog",
    "analog_summary": "romer_aihwkit.analog",
    "AnalogMoEModel": "romer_aihwkit.analog",
    "DIGITAL": "romer_aihwkit.analog",
    "MatrixSite": "romer_aihwkit.analog",
    "Placement": "romer_aihwkit.analog",
    "by_role": "romer_aihwkit.analog",
    "default_placement": "romer_aihwkit.analog",
    "register_adapter": "romer_aihwkit.adapters",
    "list_adapters": "romer_aihwkit.adapters",
    # calibration
    "calibrate": "romer_aihwkit.calibration",
    "CalibrationCallback": "romer_aihwkit.calibration",
    "Romer": "romer_aihwkit.calibration",
    "RomerAuto": "romer_aihwkit.calibration",
    "save_calibration": "romer_aihwkit.calibration",
    "load_calibration": "romer_aihwkit.calibration",
    # stress controls and diagnosis
    "apply_stress": "romer_aihwkit.stress",
    "diagnose": "romer_aihwkit.experiments.diagnose",
    # evaluation
    "perplexity": "romer_aihwkit.evaluation",
    "routing_stats": "romer_aihwkit.evaluation",
    "evaluate_tasks": "romer_aihwkit.evaluation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'romer_aihwkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
