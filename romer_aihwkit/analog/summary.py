"""``analog_summary``: how many weight matrices of each role a converted model holds on analog tiles."""

from __future__ import annotations

from torch import nn

from .experts import AnalogExperts
from .matrix import ROLES, WeightMatrix

__all__ = ["analog_summary"]


def analog_summary(model: nn.Module) -> dict[str, int]:
    """Counts of weight matrices by role: analog router / expert / shared_expert / attention, and digital.

    ``digital`` counts every weight matrix left digital: converted matrices kept digital (e.g.
    hetero experts, digital routers) plus the model's remaining ``nn.Linear`` layers (attention,
    ``lm_head``, dense MLPs, gates). Every ``nn.Linear`` module is counted, including the
    ``aihwkit.nn.AnalogLinear`` inside each matrix of ``engine="aihwkit"`` (an ``nn.Linear``
    subclass): the counts are part of a model's fingerprint in chip-state and calibration files,
    so they stay as files already saved hold them.
    """
    counts = {role: 0 for role in ROLES}
    counts["digital"] = 0
    for module in model.modules():
        if isinstance(module, WeightMatrix):
            counts[module.role if module.is_analog else "digital"] += 1
        elif isinstance(module, nn.Linear):
            counts["digital"] += 1
        elif isinstance(module, AnalogExperts):
            for bank in module.banks():
                if isinstance(bank, nn.Module) and any(isinstance(m, WeightMatrix) for m in bank.modules()):
                    continue  # a bank of matrix modules: each is counted above
                counts["expert"] += sum(bank.analog)
                counts["digital"] += len(bank) - sum(bank.analog)
    return counts
