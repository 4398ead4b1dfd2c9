"""Programming and drifting a converted model's analog matrices: one simulated chip instance."""

from __future__ import annotations

import torch
from torch import nn

from .experts import AnalogExperts
from .matrix import WeightMatrix
from .stacked import AnalogStack
from .state import analog_state
from .trace import find_routers

__all__ = ["program_analog_weights", "drift_analog_weights", "programmables"]


def programmables(model: nn.Module) -> list[WeightMatrix | AnalogStack]:
    """Everything in ``model`` that holds programmed tiles: the outermost weight matrices and the
    stacked expert banks (each programmed once).

    Args:
        model: A converted model.

    Returns:
        The weight matrices and stacked banks, in module order.
    """
    found: list[WeightMatrix | AnalogStack] = []
    owners: list[str] = []  # a weight matrix programs what it holds (e.g. an ensemble its copies)
    for name, module in model.named_modules():
        if any(name.startswith(owner + ".") for owner in owners):
            continue
        if isinstance(module, WeightMatrix):
            found.append(module)
            owners.append(name)
        elif isinstance(module, AnalogExperts):
            found.extend(bank for bank in module.banks() if isinstance(bank, AnalogStack))
    return found


@torch.no_grad()
def program_analog_weights(model: nn.Module, seed: int = 0, t_inference: float | None = None) -> None:
    """Program every analog matrix with programming noise: one simulated chip instance.

    Reproducible: matrix ``name`` draws its noise from ``(seed, name)``. Calibration installed in
    the routers and expert replicas are reset, since they belonged to the previous chip instance.
    With ``t_inference``, each matrix is also drifted right after programming: the same chip as
    ``drift_analog_weights(t_inference)`` afterwards, with a lower peak memory (AIHWKit's
    programming state is held for one matrix at a time) and no re-programming at drift time.

    Args:
        model: A converted model.
        seed: The chip instance.
        t_inference: Seconds of drift to apply right after programming (``None``: none).

    Raises:
        ValueError: ``model`` is not converted, or ``t_inference`` is outside the device's range.
        InputError: ``seed`` is not an integer in [0, 2**31) (``0.7`` is not seed 0; a bool is refused).
    """
    from ..validate import check_seed

    seed = check_seed(seed, "program_analog_weights seed")
    state = analog_state(model)
    if t_inference is not None:
        state.device_config.check_t_inference(float(t_inference))
    for experts in (m for m in model.modules() if isinstance(m, AnalogExperts)):
        experts.clear_replicas()
    for router in find_routers(model):
        router.reset_calibration()
    for item in programmables(model):
        item.program(seed, None if t_inference is None else float(t_inference))
    state.seed = int(seed)
    state.t_inference = None if t_inference is None else float(t_inference)


@torch.no_grad()
def drift_analog_weights(model: nn.Module, t_inference: float | None = None) -> None:
    """Drift every programmed matrix to ``t_inference`` seconds after programming.

    Args:
        model: A converted, programmed model.
        t_inference: Seconds after programming (``None``: the device config's ``t_inference``).

    Raises:
        RuntimeError: the model has not been programmed.
        ValueError: ``t_inference`` is outside the device's range.
    """
    state = analog_state(model)
    if not state.programmed:
        raise RuntimeError("call program_analog_weights(seed=...) before drift_analog_weights(...)")
    seed = state.programmed_seed()
    t = float(state.device_config.t_inference if t_inference is None else t_inference)
    state.device_config.check_t_inference(t)
    for item in programmables(model):
        if isinstance(item, AnalogStack):
            item.program(seed, t)  # re-programs from the seed (bit-identical) and drifts
        else:
            item.drift(t, seed)
    state.t_inference = t
