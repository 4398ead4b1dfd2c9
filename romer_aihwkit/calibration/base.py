"""The calibration callback protocol and the ``calibrate`` loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..analog.trace import RouterEvent, find_routers, trace_routing

__all__ = ["CalibrationCallback", "CalibrationReport", "calibrate", "split_holdout"]


class CalibrationCallback:
    """A post-training correction computed from the routing trace of a calibration set.

    :func:`calibrate` runs one pass over the calibration batches per callback, in order, so each
    callback sees the model with the previous callbacks' corrections installed:

    1. :meth:`start` (the analog routers of the model, in layer order),
    2. :meth:`observe` for every router forward of the pass,
    3. :meth:`finish`: install the corrections into the model, return a JSON-able report.
    """

    name: str = "callback"
    holdout_fraction: float = 0.0
    """If > 0, :func:`calibrate` observes only the first part of the calibration set and hands the
    rest to the callback as ``self.holdout_batches`` before :meth:`finish` (for model selection)."""
    holdout_batches: list | None = None

    def start(self, model: nn.Module, routers: list) -> None:  # noqa: B027
        pass

    def observe(self, event: RouterEvent) -> None:  # noqa: B027
        pass

    def finish(self, model: nn.Module) -> dict[str, Any]:
        return {}


@dataclass
class CalibrationReport:
    """What each callback did, keyed by callback name, plus the tokens seen."""

    tokens: int
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.callbacks[name]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "callbacks": self.callbacks}


@torch.no_grad()
def run_batches(model: nn.Module, batches, batch_size: int = 8, progress: bool = True, desc: str = "forward") -> int:
    """Run ``model`` over token batches (any form the API accepts); returns the tokens processed."""
    from tqdm.auto import tqdm

    from ..data import iter_model_batches

    was_training = model.training
    model.eval()
    device = _input_device(model)
    tokens = 0
    try:
        for batch in tqdm(list(iter_model_batches(model, batches, batch_size)), desc=desc, disable=not progress, leave=False):
            model(batch.to(device))
            tokens += batch.numel()
    finally:
        model.train(was_training)
    return tokens


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def split_holdout(batches, fraction: float, batch_size: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split a calibration set into (fit, held-out) lists of batches; the held-out part is the tail."""
    from ..data import iter_token_batches

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    parts = list(iter_token_batches(batches, batch_size))
    if len(parts) == 1:
        rows = parts[0]
        if rows.shape[0] < 2:
            raise ValueError("a held-out split needs at least 2 calibration blocks")
        parts = list(rows.split(1))
    n_hold = min(len(parts) - 1, max(1, round(len(parts) * fraction)))
    return parts[:-n_hold], parts[-n_hold:]


def calibrate(
    model: nn.Module,
    calib_batches,
    callbacks: list[CalibrationCallback],
    batch_size: int = 8,
    progress: bool = True,
) -> CalibrationReport:
    """Calibrate a converted, programmed model on ``calib_batches`` with ``callbacks`` (in order).

    Args:
        model: a model returned by :func:`romer_aihwkit.convert_to_analog_moe`, programmed and drifted.
        calib_batches: token blocks (LongTensor ``[N, L]``, or an iterable of tensors / dicts with
            ``input_ids``), disjoint from the evaluation data.
        callbacks: e.g. ``[romer_aihwkit.Romer()]``.
        batch_size: rows per forward when ``calib_batches`` is one tensor.
        progress: show a progress bar.

    Returns:
        A :class:`CalibrationReport`.

    Raises:
        ValueError: empty calibration set, fewer tokens than experts, no callbacks, unconverted model.
    """
    from ..analog.convert import analog_state
    from ..data import count_tokens, iter_model_batches

    if not callbacks:
        raise ValueError("calibrate() needs at least one callback, e.g. callbacks=[romer_aihwkit.Romer()]")
    state = analog_state(model)
    if not state.programmed:
        raise RuntimeError("program the chip instance first: model.program_analog_weights(seed=...)")
    routers = find_routers(model)
    n_tokens = count_tokens(iter_model_batches(model, calib_batches))  # token ids checked before any change
    if n_tokens == 0:
        raise ValueError("the calibration set is empty")
    most_experts = max(r.num_experts for r in routers)
    if n_tokens < most_experts:
        raise ValueError(
            f"the calibration set has {n_tokens} tokens, fewer than the {most_experts} experts per layer: "
            "router statistics would be meaningless; give it more text"
        )
    report = CalibrationReport(tokens=n_tokens)
    names = [cb.name for cb in callbacks]
    for cb in callbacks:
        key = cb.name if names.count(cb.name) == 1 else f"{cb.name}#{len(report.callbacks)}"
        fit = calib_batches
        if cb.holdout_fraction > 0:
            fit, cb.holdout_batches = split_holdout(calib_batches, cb.holdout_fraction, batch_size)
        cb.start(model, routers)
        with trace_routing(model, cb.observe):
            run_batches(model, fit, batch_size, progress, desc=f"calibrate [{cb.name}]")
        report.callbacks[key] = cb.finish(model)
    return report
