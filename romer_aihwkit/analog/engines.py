"""The two analog engines behind one :class:`Engine` interface: the only place that knows which is which.

* ``"stacked"`` (:class:`StackedEngine`, the default): a layer's expert matrices of one shape as
  one :class:`~romer_aihwkit.analog.stacked.AnalogStack`; single matrices (routers, shared
  experts, attention) as stacks of one. Clean weights live in a
  :class:`~romer_aihwkit.analog.reference.ReferenceStore`.
* ``"aihwkit"`` (:class:`AIHWKitEngine`, the reference): one ``aihwkit.nn.AnalogLinear`` per
  matrix (:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`), banks of them as a
  :class:`~romer_aihwkit.analog.bank.MatrixBank`; it runs AIHWKit's C++ tiles where a device has
  forward non-idealities only they simulate.

Both build the modules of the engine contract (:mod:`romer_aihwkit.analog.bank`), so conversion,
programming, chip-state files, summaries and the baselines never ask which engine a model uses.
:func:`resolve_engine` picks the engine for a device once, falling back to the AIHWKit engine with
a warning for settings the stacked engine does not reproduce.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch

from ..errors import InputError
from .bank import AnalogBank, MatrixBank
from .matrix import AnalogMatrix, DigitalMatrix, StackedMatrix, WeightMatrix
from .reference import ReferenceStore
from .stacked import AnalogStack, unsupported_reason

__all__ = ["ENGINES", "AIHWKitEngine", "Engine", "StackedEngine", "engine_for", "engine_of", "mixed_bank_error",
           "resolve_engine", "warn_fallback"]

Biases = Sequence[torch.Tensor | None] | torch.Tensor | None
Factory = Callable[[], Any]


def mixed_bank_error(bank: str) -> InputError:
    """The refusal of a bank (one MoE layer's ``gate_up`` or ``down`` matrices) placed on several devices
    by an engine that holds one device per bank (:attr:`Engine.mixed_banks` false)."""
    return InputError(f"the placement puts the experts of {bank} on different devices; the stacked engine holds one "
                      "device per expert bank (one MoE layer's gate_up or down matrices): convert with "
                      "engine='aihwkit', which places every matrix on its own device")


class Engine:
    """Builds a converted model's analog matrices and banks on one engine.

    Args:
        store: where the clean weights of the engine's stacks live (stacked engine; default: memory).
        tile_dtype: dtype of the expert banks' programmed tiles (stacked engine; ``None``: the weights').
    """

    name: ClassVar[str]
    mixed_banks: ClassVar[bool]
    """Whether one bank may hold matrices on different devices."""

    def __init__(self, store: ReferenceStore | None = None, tile_dtype: torch.dtype | None = None) -> None:
        self.store = store
        self.tile_dtype = tile_dtype

    def rpu_config_factory(self, device_config: Any) -> Callable[[], Any]:
        """The callable returning a fresh rpu_config of ``device_config`` in the form this engine's tiles take."""
        raise NotImplementedError

    def analog_matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
                      rpu_config: Any) -> WeightMatrix:
        raise NotImplementedError

    def matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
               rpu_config: Any = None) -> WeightMatrix:
        """Matrix ``name`` on this engine's tiles, or a :class:`DigitalMatrix` when ``rpu_config`` is ``None``."""
        if rpu_config is None:
            return DigitalMatrix(weight, bias, role, name)
        return self.analog_matrix(weight, bias, role, name, rpu_config)

    def bank(self, weights: torch.Tensor | Sequence[torch.Tensor], names: list[str], role: str, key: str,
             factories: Sequence[Factory | None], bias: Biases = None, default: Factory | None = None) -> AnalogBank:
        """``M`` matrices of one shape as one bank.

        Args:
            weights: ``[M, out, in]`` (the stacked engine takes over this tensor's storage) or ``M`` matrices.
            names: each matrix's name in the model.
            role: the matrices' role.
            key: the bank's key in the reference store.
            factories: per matrix, the rpu_config factory of its device (a fresh rpu_config per
                call), or ``None`` to keep it digital.
            bias: ``M`` biases (``[M, out]`` or a list), or ``None``.
            default: the factory of a bank whose matrices are all digital (the model's main device).

        Raises:
            InputError: devices this engine cannot hold in one bank (:attr:`mixed_banks`).
        """
        raise NotImplementedError


class StackedEngine(Engine):
    """The stacked engine (:mod:`romer_aihwkit.analog.stacked`)."""

    name = "stacked"
    mixed_banks = False

    def rpu_config_factory(self, device_config: Any) -> Callable[[], Any]:
        return device_config.rpu_config

    def analog_matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
                      rpu_config: Any) -> WeightMatrix:
        # routers are small and their clean weights are read on every traced forward: keep them in memory
        store = ReferenceStore("memory") if role == "router" or self.store is None else self.store
        return StackedMatrix(weight, bias, rpu_config, role, name, store)

    def bank(self, weights: torch.Tensor | Sequence[torch.Tensor], names: list[str], role: str, key: str,
             factories: Sequence[Factory | None], bias: Biases = None, default: Factory | None = None) -> AnalogBank:
        used = list({id(f): f for f in factories if f is not None}.values())
        if len(used) > 1:
            raise mixed_bank_error(key)
        factory = used[0] if used else default
        if factory is None:
            raise InputError(f"{key}: a bank of digital matrices needs the model's device (default=)")
        stacked = weights if isinstance(weights, torch.Tensor) else torch.stack([w.detach() for w in weights])
        if isinstance(bias, torch.Tensor) or bias is None:
            bias_t = bias
        else:
            bias_t = None if bias[0] is None else torch.stack([cast(torch.Tensor, b).detach() for b in bias])
        return AnalogStack(stacked.detach(), names, factory(), role,
                           self.store if self.store is not None else ReferenceStore("memory"), key=key,
                           analog=[f is not None for f in factories], bias=bias_t, tile_dtype=self.tile_dtype)


class AIHWKitEngine(Engine):
    """AIHWKit's per-matrix tiles (:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`), the reference."""

    name = "aihwkit"
    mixed_banks = True

    def rpu_config_factory(self, device_config: Any) -> Callable[[], Any]:
        # AIHWKit's own tiles need the C++ ones for the forward non-idealities its torch tiles reject
        return device_config.aihwkit_rpu_config

    def analog_matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
                      rpu_config: Any) -> WeightMatrix:
        return AnalogMatrix(weight, bias, rpu_config, role, name)

    def bank(self, weights: torch.Tensor | Sequence[torch.Tensor], names: list[str], role: str, key: str,
             factories: Sequence[Factory | None], bias: Biases = None, default: Factory | None = None) -> AnalogBank:
        biases = [None] * len(names) if bias is None else bias
        return MatrixBank([self.matrix(weights[m], biases[m], role, names[m], None if f is None else f())
                           for m, f in enumerate(factories)])


_ENGINE_CLASSES: dict[str, type[Engine]] = {cls.name: cls for cls in (StackedEngine, AIHWKitEngine)}
ENGINES = tuple(_ENGINE_CLASSES)
"""``stacked``: :mod:`romer_aihwkit.analog.stacked` (default); ``aihwkit``: one AIHWKit ``AnalogLinear`` per matrix (the reference)."""


def resolve_engine(devices: Any, engine: str = "stacked", reference: str = "auto",
                   reference_dir: str | None = None, tile_dtype: torch.dtype | None = None) -> Engine:
    """The engine that converts a model for ``devices`` (one device config, or every device a placement uses).

    ``"stacked"`` falls back to ``"aihwkit"`` with a warning for a setting of any of the devices it
    does not reproduce. Each device's rpu_config is built once here, so an unusable device refuses
    before any model is touched.

    Raises:
        InputError: an unknown engine or reference mode.
        EngineError: the engine cannot run one of ``devices`` here.
    """
    configs = list(devices) if isinstance(devices, (list, tuple)) else [devices]
    if engine not in _ENGINE_CLASSES:
        raise InputError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "stacked":
        reason = next((r for r in (unsupported_reason(d.rpu_config()) for d in configs) if r is not None), None)
        if reason is not None:
            warn_fallback(reason, stacklevel=4)
            engine = "aihwkit"
    chosen = (StackedEngine(ReferenceStore(reference, reference_dir), tile_dtype) if engine == "stacked"
              else AIHWKitEngine())
    for config in configs:
        chosen.rpu_config_factory(config)()  # refuse before touching the model
    return chosen


def engine_of(state: Any) -> Engine:
    """The engine a converted model's :class:`~romer_aihwkit.analog.state.AnalogState` was converted with."""
    return _ENGINE_CLASSES[state.engine](store=state.reference)


def engine_for(rpu_config: Any) -> Engine:
    """The stacked engine where it reproduces ``rpu_config``, else the AIHWKit engine (no warning)."""
    return StackedEngine() if unsupported_reason(rpu_config) is None else AIHWKitEngine()


_WARNED: set[str] = set()


def warn_fallback(reason: str, engine: str = "aihwkit", stacklevel: int = 3) -> None:
    """Warn once per ``reason`` that a conversion runs on AIHWKit's per-matrix tiles instead of the
    stacked engine (nothing when ``engine`` is the stacked one)."""
    if engine == "stacked" or reason in _WARNED:
        return
    _WARNED.add(reason)
    warnings.warn(
        f"the stacked analog engine does not reproduce {reason}; converting with AIHWKit's "
        "per-matrix tiles (engine='aihwkit'), which is slower and uses more memory",
        RuntimeWarning,
        stacklevel=stacklevel,
    )
