"""Programming and drifting a converted model's analog matrices: one simulated chip instance.

The drift time has one meaning at every public entry point: ``t_inference=None`` is the device's
default ``t_inference`` (its config field), a number is that many seconds after programming, and
``0.0`` is a drift of 0 s (not the same chip as an undrifted one: drift and accumulated read noise
are drawn for it). Leaving the chip undrifted is :data:`NOT_DRIFTED`, the default of
:func:`program_analog_weights` (drift it later with :func:`drift_analog_weights`).
"""

from __future__ import annotations

import enum
from typing import Literal

import torch
from torch import nn

from ..validate import check_seed
from .bank import Programmable
from .experts import AnalogExperts
from .matrix import WeightMatrix
from .progress import progress_bar
from .state import AnalogState, analog_state
from .trace import find_routers

__all__ = ["NOT_DRIFTED", "program_analog_weights", "drift_analog_weights", "programmables"]


class NotDrifted(enum.Enum):
    """The type of :data:`NOT_DRIFTED` (a one-member enum, so that type checkers know the value)."""

    NOT_DRIFTED = "programmed, not drifted"

    def __repr__(self) -> str:
        return "NOT_DRIFTED"


NOT_DRIFTED = NotDrifted.NOT_DRIFTED
"""``program_analog_weights(t_inference=NOT_DRIFTED)`` (its default): program the chip and leave it
undrifted (the chip state records ``t_inference`` null); ``None`` there drifts to the device's default."""


def programmables(model: nn.Module) -> list[Programmable]:
    """Everything in ``model`` that holds programmed tiles: the outermost weight matrices and the
    experts' banks (each programmed once).

    Args:
        model: A converted model.

    Returns:
        The weight matrices and banks, in module order.
    """
    found: list[Programmable] = []
    owners: list[str] = []  # a weight matrix or the experts program what they hold (e.g. an ensemble its copies)
    for name, module in model.named_modules():
        if any(name.startswith(owner + ".") for owner in owners):
            continue
        if isinstance(module, WeightMatrix):
            found.append(module)
            owners.append(name)
        elif isinstance(module, AnalogExperts):
            found.extend(module.banks())
            owners.append(name)
    return found


def _materialise(items: list[Programmable], desc: str, progress: bool) -> None:
    """Compute every lazily recorded chip, with one bar over the matrices."""
    total = sum(item.pending for item in items)
    with progress_bar(total, desc, "matrix", progress) as bar:
        for item in items:
            item.materialise(bar.update)


@torch.no_grad()
def program_analog_weights(model: nn.Module, seed: int = 0,
                           t_inference: float | None | Literal[NotDrifted.NOT_DRIFTED] = NOT_DRIFTED,
                           progress: bool = True) -> None:
    """Program every analog matrix with programming noise: one simulated chip instance.

    Reproducible: tile ``(r, c)`` of matrix ``name`` draws its noise from ``(seed, name, r, c)``, in
    either engine. Calibration installed in the routers and expert replicas are reset, since they
    belonged to the previous chip instance. With ``t_inference``, each tile is also drifted in the
    same pass: the same chip as ``drift_analog_weights(t_inference)`` afterwards (``None``: the
    device's default drift time, as in :func:`drift_analog_weights`).

    Without ``t_inference`` (:data:`NOT_DRIFTED`) the chip is recorded and computed when first needed: by
    :func:`drift_analog_weights` (so programming then drifting costs one pass, like one call with
    ``t_inference``), or by the first forward through each matrix, or when the chip state is saved.

    Args:
        model: A converted model.
        seed: The chip instance.
        t_inference: Seconds of drift to apply right after programming; ``None``: the device config's
            ``t_inference``; :data:`NOT_DRIFTED` (the default): no drift (the chip is left programmed).
        progress: Show a progress bar over the matrices (only once the work takes a few seconds).

    Raises:
        ValueError: ``model`` is not converted, or ``t_inference`` is outside the device's range.
        InputError: ``seed`` is not an integer in [0, 2**31) (``0.7`` is not seed 0; a bool is refused).
    """

    seed = check_seed(seed, "program_analog_weights seed")
    state = analog_state(model)
    drift = t_inference is not NOT_DRIFTED
    t = _drift_time(state, t_inference) if t_inference is not NOT_DRIFTED else 0.0  # t is used only with drift
    for experts in (m for m in model.modules() if isinstance(m, AnalogExperts)):
        experts.clear_replicas()
    for router in find_routers(model):
        router.reset_calibration()
    items = programmables(model)
    for item in items:
        item.program(seed, t if drift else None, lazy=True)  # the engine's None: programmed, not drifted
    if drift:
        _materialise(items, "programming + drift", progress)
    state.seed = int(seed)
    state.t_inference = t if drift else None  # the chip state's null: not drifted


@torch.no_grad()
def drift_analog_weights(model: nn.Module, t_inference: float | None = None, progress: bool = True) -> None:
    """Drift every programmed matrix to ``t_inference`` seconds after programming.

    The drifted chip is the programmed one (every tile's programming noise comes from its seed);
    it is computed from the clean weights in one pass per tile, whether the programmed chip was
    computed before or only recorded.

    Args:
        model: A converted, programmed model.
        t_inference: Seconds after programming (``None``: the device config's ``t_inference``).
        progress: Show a progress bar over the matrices (only once the work takes a few seconds).

    Raises:
        RuntimeError: the model has not been programmed.
        ValueError: ``t_inference`` is outside the device's range.
    """
    state = analog_state(model)
    if not state.programmed:
        raise RuntimeError("call program_analog_weights(seed=...) before drift_analog_weights(...)")
    seed = state.programmed_seed()
    t = _drift_time(state, t_inference)
    items = programmables(model)
    for item in items:
        item.program(seed, t, lazy=True)  # the programmed chip, drifted (AIHWKit-programmed matrices: eager)
    _materialise(items, "drift", progress)
    state.t_inference = t


def _drift_time(state: AnalogState, t_inference: float | None) -> float:
    """The checked drift time in seconds: ``t_inference``, or the device's default for ``None``.

    Raises:
        InputError: (a ``ValueError``) Not a number of seconds the device accepts.
    """
    default = state.device_config.t_inference
    return state.check_t_inference(float(default if t_inference is None else t_inference))
