"""``AnalogMoEModel``: the class a converted model becomes, with typed methods instead of patched functions.

Like AIHWKit's ``AnalogWrapper``, conversion marks the model's root by class:
:func:`~romer_aihwkit.analog.convert_to_analog_moe` swaps ``model.__class__`` to a subclass of both
:class:`AnalogMoEModel` and the model's own class (``AnalogOlmoeForCausalLM`` for an
``OlmoeForCausalLM``), cached per class. The instance keeps every Hugging Face behaviour
(``generate()``, ``output_router_logits``, ``.to()``, ``copy.deepcopy``); ``save_pretrained``
writes the digital weights under the original class name, so the folder loads back as the
original model. The dynamic class cannot be pickled by name: save a chip instance with
:meth:`AnalogMoEModel.save_chip_state` instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from torch import nn

from . import calibration_state, programming, state_io
from .programming import NotDrifted
from .state import AnalogState

__all__ = ["AnalogMoEModel", "analog_class_of", "mark_converted"]


class AnalogMoEModel(nn.Module):
    """Mixin of every converted model: one simulated chip instance of an MoE model on analog tiles.

    It defines no ``__init__`` and no parameters: it only adds methods to the model's own class,
    which follows it in the method resolution order.
    """

    original_class: type[nn.Module]
    """The model's class before conversion (set on each dynamic subclass)."""

    @property
    def analog_state(self) -> AnalogState:
        """The chip-instance bookkeeping: device config, converted blocks, seed, drift time, engine."""
        return self.__dict__["_romer_analog_state"]

    def program_analog_weights(self, seed: int = 0, t_inference: float | None | Literal[NotDrifted.NOT_DRIFTED] = (
            programming.NOT_DRIFTED), progress: bool = True) -> None:
        """Program one chip instance (see :func:`~romer_aihwkit.analog.programming.program_analog_weights`).

        Args:
            seed: The chip instance; every tile draws its noise from ``(seed, matrix name, tile position)``.
            t_inference: Drift each matrix to this many seconds right after programming; ``None``: the
                device config's ``t_inference``; omitted (``NOT_DRIFTED``): no drift.
            progress: Show a progress bar (only once the work takes a few seconds).
        """
        programming.program_analog_weights(self, seed=seed, t_inference=t_inference, progress=progress)

    def drift_analog_weights(self, t_inference: float | None = None, progress: bool = True) -> None:
        """Drift the programmed chip instance (see :func:`~romer_aihwkit.analog.programming.drift_analog_weights`).

        Args:
            t_inference: Seconds after programming (``None``: the device config's).
            progress: Show a progress bar (only once the work takes a few seconds).
        """
        programming.drift_analog_weights(self, t_inference=t_inference, progress=progress)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the *digital* weights in the original layout; the folder loads as the original class.

        Args:
            save_directory: The folder, as for ``PreTrainedModel.save_pretrained``.
            **kwargs: Passed on to the original class's ``save_pretrained``.
        """
        state_io.save_pretrained_digital(self, save_directory, **kwargs)

    def save_chip_state(self, path: str | os.PathLike) -> Path:
        """Save the programmed chip instance (see :func:`~romer_aihwkit.analog.state_io.save_analog_state`).

        Args:
            path: The safetensors file to write (atomically).

        Returns:
            The path written.
        """
        return state_io.save_analog_state(self, path)

    def load_chip_state(self, path: str | os.PathLike) -> None:
        """Restore a chip instance saved by :meth:`save_chip_state` (all or nothing).

        Args:
            path: The safetensors file.
        """
        state_io.load_analog_state(self, path)

    def save_calibration(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Save the installed calibration (see :func:`~romer_aihwkit.analog.calibration_state.save_calibration`).

        Args:
            path: ``PATH`` of ``PATH.safetensors`` and ``PATH.json``.

        Returns:
            The two paths written.
        """
        return calibration_state.save_calibration(self, path)

    def load_calibration(self, path: str | os.PathLike) -> dict[str, Any]:
        """Install a calibration saved by :meth:`save_calibration` onto this chip instance (all or nothing).

        Args:
            path: ``PATH`` given to :meth:`save_calibration` (either file's path works too).

        Returns:
            The calibration's metadata.
        """
        return calibration_state.load_calibration(self, path)


_CLASSES: dict[type, type] = {}


def analog_class_of(cls: type[nn.Module]) -> type[nn.Module]:
    """The converted class of ``cls``: ``type(f"Analog{cls.__name__}", (AnalogMoEModel, cls), {})``, cached.

    Args:
        cls: A model class (a Hugging Face ``PreTrainedModel`` subclass or any ``nn.Module``).

    Returns:
        The subclass; ``cls`` itself when it already is one.
    """
    if issubclass(cls, AnalogMoEModel):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Analog{cls.__name__}", (AnalogMoEModel, cls), {"original_class": cls})
    return _CLASSES[cls]


def mark_converted(model: nn.Module, state: AnalogState) -> AnalogMoEModel:
    """Make ``model`` an :class:`AnalogMoEModel` holding ``state`` (in place).

    Args:
        model: The model whose MoE blocks were just converted.
        state: Its analog state.

    Returns:
        The same object, now of the converted class.
    """
    model.__dict__["_romer_analog_state"] = state
    model.__class__ = analog_class_of(type(model))
    assert isinstance(model, AnalogMoEModel)
    return model
