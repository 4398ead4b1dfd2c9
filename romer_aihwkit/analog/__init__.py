"""Analog MoE modules and the conversion of Hugging Face models onto AIHWKit tiles."""

from .block import AnalogMoEBlock
from .calibration_state import load_calibration, reset_replacements, save_calibration
from .convert import NoMoEBlocksError, UnsupportedMoEError, analog_summary, convert_to_analog_moe
from .experts import AnalogExperts
from .matrix import AnalogMatrix, DigitalMatrix, WeightMatrix
from .model import AnalogMoEModel
from .placement import DIGITAL, MatrixSite, Placement, by_role, default_placement
from .programming import drift_analog_weights, program_analog_weights
from .router import AnalogRouter
from .state import AnalogState, analog_state
from .state_io import digital_state_dict, load_analog_state, save_analog_state
from .trace import RouterEvent, experts_of, find_routers, trace_routing

__all__ = [
    "DIGITAL",
    "MatrixSite",
    "Placement",
    "by_role",
    "default_placement",
    "AnalogExperts",
    "AnalogMatrix",
    "AnalogMoEBlock",
    "AnalogMoEModel",
    "AnalogRouter",
    "AnalogState",
    "DigitalMatrix",
    "NoMoEBlocksError",
    "RouterEvent",
    "UnsupportedMoEError",
    "WeightMatrix",
    "analog_state",
    "analog_summary",
    "convert_to_analog_moe",
    "digital_state_dict",
    "drift_analog_weights",
    "load_analog_state",
    "load_calibration",
    "reset_replacements",
    "save_calibration",
    "save_analog_state",
    "experts_of",
    "find_routers",
    "program_analog_weights",
    "trace_routing",
]
