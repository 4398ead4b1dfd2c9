"""The baseline techniques: AIHWKit static input ranges, the heterogeneous analog/digital split,
router ensembles and hardware-aware training (:mod:`.hwa`, :mod:`.router_ensemble`).

The named comparison methods that use them are in :mod:`romer_aihwkit.experiments.methods`.
"""

from .hetero import hetero_placement, max_neuron_norms, select_hetero_experts
from .input_range import calibrate_static_input_ranges

__all__ = [
    "calibrate_static_input_ranges",
    "hetero_placement",
    "max_neuron_norms",
    "select_hetero_experts",
]
