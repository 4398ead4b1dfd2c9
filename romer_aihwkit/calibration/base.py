"""The calibration callback protocol and the ``calibrate`` loop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..analog.convert import analog_state
from ..analog.seeds import matrix_seed
from ..analog.trace import RouterEvent, find_routers, trace_routing
from ..data import count_tokens, iter_model_batches, iter_token_batches
from .reports import CallbackReport, RomerReport, report_from_dict

__all__ = ["CalibrationCallback", "CalibrationReport", "CallbackReport", "calibrate", "merge_reports",
           "split_holdout"]


class CalibrationCallback:
    """A post-training correction computed from the routing trace of a calibration set.

    :func:`calibrate` runs one pass over the calibration batches per callback, in order, so each
    callback sees the model with the previous callbacks' corrections installed:

    1. :meth:`start` (the analog routers of the model, in layer order),
    2. :meth:`observe` for every router forward of the pass,
    3. :meth:`finish`: install the corrections into the model, return its report: a
       :class:`~romer_aihwkit.calibration.reports.CallbackReport` (``to_dict()``: the JSON-able
       dict written) or a JSON-able dict.
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

    def finish(self, model: nn.Module) -> CallbackReport | dict[str, Any]:
        return {}


@dataclass(frozen=True)
class CalibrationReport:
    """What each callback did, keyed by callback name, plus the tokens seen.

    ``callbacks`` holds typed reports for the package's callbacks
    (:class:`~romer_aihwkit.calibration.reports.RomerReport`,
    :class:`~romer_aihwkit.calibration.reports.RouterAlignReport`) and what other callbacks
    returned (a :class:`~romer_aihwkit.calibration.reports.CallbackReport` or a JSON-able dict).
    ``to_dict()`` is the JSON a calibration writes (``report.json``'s ``calibration``, and what
    :func:`~romer_aihwkit.experiments.apply_method` returns besides its own keys); :meth:`from_dict`
    reads it back.
    """

    tokens: int
    callbacks: dict[str, CallbackReport | dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """The report of the callback ``name`` (e.g. ``report["romer"]``)."""
        return self.callbacks[name]

    @property
    def replaced_experts(self) -> int:
        """Experts replaced by every callback together (all layers; ROMER's expert replacement)."""
        return int(sum(cb.replaced_experts if isinstance(cb, RomerReport)
                       else cb.get("replaced_experts", 0) if isinstance(cb, dict) else 0
                       for cb in self.callbacks.values()))

    @property
    def masked_share(self) -> list[float] | None:
        """Per MoE layer, the largest share of its experts a callback masked (``None``: no callback
        reports it per layer, i.e. nothing calibrated routing)."""
        shares: list[float] | None = None
        for cb in self.callbacks.values():
            values = _masked_shares(cb)
            if values is not None:
                shares = values if shares is None else [max(a, b) for a, b in zip(shares, values)]
        return shares

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens,
                "callbacks": {name: cb if isinstance(cb, dict) else cb.to_dict() for name, cb in self.callbacks.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationReport:
        """Read :meth:`to_dict`'s form (other keys, e.g. those :func:`apply_method
        <romer_aihwkit.experiments.apply_method>` adds, are ignored); an empty dict is no calibration."""
        return cls(int(data.get("tokens", 0)),
                   {name: report_from_dict(name, cb) for name, cb in (data.get("callbacks") or {}).items()})


def _masked_shares(cb: Any) -> list[float] | None:
    """Per layer, the share of experts ``cb`` masked; ``None`` if it does not report it for every layer."""
    if isinstance(cb, RomerReport):
        values = [layer.masked_share for layer in cb.layers]
        return [float(v) for v in values if v is not None] if values and None not in values else None
    layers = cb.get("layers") if isinstance(cb, dict) else None
    if not layers or not all(isinstance(layer, dict) and "masked_share" in layer for layer in layers):
        return None
    return [float(layer["masked_share"]) for layer in layers]


@torch.no_grad()
def run_batches(model: nn.Module, batches, batch_size: int = 8, progress: bool = True, desc: str = "forward") -> int:
    """Run ``model`` over token batches (any form the API accepts); returns the tokens processed."""
    from tqdm.auto import tqdm


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
    hf: Any = model  # a Hugging Face model (get_input_embeddings), or any module
    embeddings = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def split_holdout(batches, fraction: float, batch_size: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split a calibration set into (fit, held-out) lists of batches; the held-out part is the tail."""

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
    sequential: bool = False,
    seed: int | None = None,
) -> CalibrationReport:
    """Calibrate a converted, programmed model on ``calib_batches`` with ``callbacks`` (in order).

    Args:
        model: a model returned by :func:`romer_aihwkit.convert_to_analog_moe`, programmed and drifted.
        calib_batches: token blocks (LongTensor ``[N, L]``, or an iterable of tensors / dicts with
            ``input_ids``), disjoint from the evaluation data.
        callbacks: e.g. ``[romer_aihwkit.Romer()]``.
        batch_size: rows per forward when ``calib_batches`` is one tensor.
        progress: show a progress bar.
        sequential: calibrate one MoE layer at a time, in order: layer ``l``'s statistics are taken
            with the corrections of layers ``< l`` already installed, so they describe the hidden
            states the corrected model really produces (one pass per layer, each stopped right after
            that layer's router; the default takes every layer's statistics in one pass on the
            uncorrected model). Each callback is started with one router at a time; the per-layer
            reports are merged (:func:`merge_reports`) and marked ``"sequential": True``.
        seed: seed of every random draw of the calibration passes (the tiles' read noise); ``None``:
            derived from the programmed chip instance's seed. The global random state is left as
            it was, so the same chip and calibration data give the same calibration whatever
            ran before, and the caller's own random stream is not consumed.

    Returns:
        A :class:`CalibrationReport`.

    Raises:
        ValueError: empty calibration set, fewer tokens than experts, no callbacks, unconverted model.
    """

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
    draws = matrix_seed(state.programmed_seed() if seed is None else int(seed), "calibrate", "forward")
    device = _input_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(draws)
        return _calibrate(model, calib_batches, callbacks, batch_size, progress, sequential, routers,
                          CalibrationReport(tokens=n_tokens))


def _calibrate(model: nn.Module, calib_batches, callbacks: list[CalibrationCallback], batch_size: int,
               progress: bool, sequential: bool, routers: list, report: CalibrationReport) -> CalibrationReport:
    names = [cb.name for cb in callbacks]
    for cb in callbacks:
        key = cb.name if names.count(cb.name) == 1 else f"{cb.name}#{len(report.callbacks)}"
        fit = calib_batches
        if cb.holdout_fraction > 0:
            fit, cb.holdout_batches = split_holdout(calib_batches, cb.holdout_fraction, batch_size)
        if not sequential:
            cb.start(model, routers)
            with trace_routing(model, cb.observe):
                run_batches(model, fit, batch_size, progress, desc=f"calibrate [{cb.name}]")
            report.callbacks[key] = cb.finish(model)
            continue
        per_layer = []
        for router in routers:
            cb.start(model, [router])
            _run_until(model, router, cb.observe, fit, batch_size, progress, f"calibrate [{cb.name}] {router.name}")
            per_layer.append(cb.finish(model))
        merged = {**merge_reports(per_layer), "sequential": True}
        kinds = {type(r) for r in per_layer}  # a typed report with from_dict is read back typed
        read = getattr(kinds.pop(), "from_dict", None) if len(kinds) == 1 else None
        report.callbacks[key] = read(merged) if read is not None else merged
    return report


class _StopForward(Exception):
    """Raised by the sequential observer once its layer's router has run: the rest of the forward is not needed."""


@torch.no_grad()
def _run_until(model: nn.Module, router, observe, batches, batch_size: int, progress: bool, desc: str) -> None:
    """Forward every batch up to (and including) ``router``, handing its events to ``observe``."""
    from tqdm.auto import tqdm


    def only_this(event: RouterEvent) -> None:
        if event.router is router:
            observe(event)
            raise _StopForward

    was_training = model.training
    model.eval()
    device = _input_device(model)
    router.observers.append(only_this)
    try:
        for batch in tqdm(list(iter_model_batches(model, batches, batch_size)), desc=desc, disable=not progress,
                          leave=False):
            try:
                model(batch.to(device))
            except _StopForward:
                pass
    finally:
        router.observers.remove(only_this)
        model.train(was_training)


def merge_reports(reports: list[CallbackReport | dict[str, Any]]) -> dict[str, Any]:
    """Merge per-layer callback reports (typed, or dicts) into one dict.

    ``settings`` is taken from the first report; ``selection`` (per-layer choices, e.g. RomerAuto's)
    is listed per layer; lists are concatenated (e.g. ``layers``), integers summed (e.g.
    ``replaced_experts``), other numbers averaged (per-layer means stay means over layers), mappings
    merged key by key, equal strings kept once; anything else is listed per layer.
    """
    if not reports:
        return {}
    dicts = [r if isinstance(r, dict) else r.to_dict() for r in reports]
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for r in dicts for k in r):
        values = [r[k] for r in dicts if k in r]
        out[k] = values[0] if k == "settings" else values if k == "selection" else _merge_values(values)
    return out


def _merge_values(values: list[Any]) -> Any:
    if all(isinstance(v, list) for v in values):
        return [x for v in values for x in v]
    if all(isinstance(v, bool) for v in values):
        return values[0] if len(set(values)) == 1 else values
    if all(isinstance(v, int) for v in values):
        return sum(values)
    if all(isinstance(v, (int, float)) for v in values):
        return sum(values) / len(values)
    if all(isinstance(v, dict) for v in values):
        return merge_reports(values)
    if all(v == values[0] for v in values[1:]):
        return values[0]
    return values
