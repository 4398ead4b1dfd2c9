"""The chip-instance bookkeeping of a converted model (:class:`AnalogState`), shared by every analog module.

A neutral module: conversion, programming, chip-state files and calibration files all read the
state through :func:`analog_state` without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["AnalogState", "analog_state"]


@dataclass
class AnalogState:
    """Chip-instance bookkeeping attached to a converted model (``model.analog_state``)."""

    device_config: Any
    """The :class:`~romer_aihwkit.devices.DeviceConfig` the model was converted with."""
    blocks: list[tuple[str, str]] = field(default_factory=list)
    """``(module name, adapter family)`` of each converted MoE block, in layer order."""
    seed: int | None = None
    t_inference: float | None = None
    """Seconds the chip instance has drifted; ``None`` while only programmed (not drifted)."""
    analog_attention: bool = False
    analog_router: bool = True
    digital_experts: dict[int, list[int]] = field(default_factory=dict)
    """``{moe_layer: [experts]}`` kept digital."""
    engine: str = "stacked"
    """The analog engine the model was converted with (see :data:`~romer_aihwkit.analog.engines.ENGINES`)."""
    reference: Any = None
    """The :class:`~romer_aihwkit.analog.reference.ReferenceStore` of the stacked engine (``None``: aihwkit engine)."""
    placement: dict[str, Any] | None = None
    """``None`` when ``device_config``, ``analog_router``, ``analog_attention`` and ``digital_experts`` say
    where every matrix is; else the placement (:meth:`~romer_aihwkit.analog.placement.PlacementPlan.record`):
    ``roles`` (``{role: {device name or "digital": matrices}}``) and ``digest`` (of every matrix's device
    content), which the model's fingerprint compares in place of ``device_config``'s. The keyword
    fields then say: some router analog, some attention analog, experts with every matrix digital;
    ``device_config`` is the device holding the most analog matrices."""
    devices: list[Any] = field(default_factory=list)
    """Every device config the placement puts a matrix on (``[device_config]`` for the keywords)."""

    def check_t_inference(self, t_inference: float) -> float:
        """``t_inference`` checked against every device the model uses (their ``allowed_t_inference``).

        Raises:
            InputError: A device does not allow it.
        """
        for device in self.devices or [self.device_config]:
            device.check_t_inference(t_inference)
        return float(t_inference)

    @property
    def programmed(self) -> bool:
        """Whether a chip instance has been programmed (``program_analog_weights`` was called)."""
        return self.seed is not None

    def programmed_seed(self) -> int:
        """The seed of the programmed chip instance.

        Returns:
            ``seed``.

        Raises:
            RuntimeError: nothing is programmed yet.
        """
        if self.seed is None:
            raise RuntimeError("the model is not programmed: call program_analog_weights(seed=...) first")
        return self.seed


def analog_state(model: nn.Module) -> AnalogState:
    """The :class:`AnalogState` of a converted model.

    Args:
        model: A model returned by :func:`~romer_aihwkit.analog.convert_to_analog_moe`.

    Returns:
        Its analog state.

    Raises:
        ValueError: ``model`` is not a converted model.
    """
    state = getattr(model, "analog_state", None)
    if not isinstance(state, AnalogState):
        raise ValueError(
            f"{type(model).__name__} is not a converted model: call romer_aihwkit.convert_to_analog_moe(model, ...) first"
        )
    return state
