"""AIHWKit baselines, the heterogeneous analog/digital baseline, and the named comparison methods."""

from .hetero import max_neuron_norms, select_hetero_experts
from .input_range import calibrate_static_input_ranges
from .methods import METHODS, Method, apply_method, get_method, list_methods, prepare_model, register_method

__all__ = [
    "METHODS",
    "Method",
    "apply_method",
    "calibrate_static_input_ranges",
    "get_method",
    "list_methods",
    "max_neuron_norms",
    "prepare_model",
    "register_method",
    "select_hetero_experts",
]
