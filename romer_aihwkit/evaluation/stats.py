"""Aggregation over chip instances: mean, std and 95 % confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .records import CONTROL_METRICS, GROUP_KEYS, METRICS, TASK_METRICS, ResultRow, Stat, SummaryEntry

__all__ = ["mean_std_ci", "summarize", "summarize_rows", "task_values", "with_recovery", "edit_dominates",
           "recovery_beyond_edit",
           "METRICS", "GROUP_KEYS", "TASK_METRICS", "CONTROL_METRICS", "RECOVERY_BASELINE"]

RECOVERY_BASELINE = "global"
"""The method whose analog gap ``recovered`` is measured against (AIHWKit's global drift compensation)."""


def task_values(row: ResultRow | Mapping[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` of a row's downstream tasks (``acc``, ``acc_norm``), empty without tasks."""
    if isinstance(row, ResultRow):
        return row.task_values()
    return {f"{task}/{metric}": float(value) for task, metrics in (row.get("tasks") or {}).items()
            for metric, value in metrics.items() if metric in TASK_METRICS and value is not None}


def _t_quantile(df: int, p: float = 0.975) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(p, df))
    except ImportError:  # pragma: no cover - scipy ships with aihwkit
        return 1.959963984540054


def mean_std_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the half-width of the Student-t confidence interval of the mean."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "ci95": float("nan")}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": float("nan"), "ci95": float("nan")}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = _t_quantile(n - 1, 0.5 + confidence / 2) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": half}


def summarize(rows: Iterable[ResultRow | Mapping[str, Any]]) -> list[SummaryEntry]:
    """One summary entry per (model, device, method, t_inference), in first-seen order.

    Each metric of :data:`METRICS` gets its mean, std and 95 % CI over the group's chip instances
    (NaN and absent values skipped), and so does each of :data:`CONTROL_METRICS` that a row of the
    group carries (``recovered`` is paired by construction: one value per chip instance); rows with downstream tasks add ``tasks`` per ``"task/metric"``.
    """
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        typed = ResultRow.coerce(row)
        groups.setdefault(tuple(getattr(typed, k) for k in GROUP_KEYS), []).append(typed)
    summary = []
    for key, members in groups.items():
        metrics = {}
        controls = [m for m in CONTROL_METRICS if any(r.metric(m) is not None for r in members)]
        for metric in (*METRICS, *controls):
            values = [v for v in (r.metric(metric) for r in members) if v is not None and not _isnan(v)]
            metrics[metric] = Stat(**mean_std_ci(values))
        per_row = [r.task_values() for r in members]
        names = list(dict.fromkeys(name for values in per_row for name in values))
        tasks = {name: Stat(**mean_std_ci(v[name] for v in per_row if name in v)) for name in names}
        model, device, method, t = key
        summary.append(SummaryEntry(model, device, method, t, tuple(sorted(r.seed for r in members)),
                                    metrics["ppl"].n, metrics, tasks))
    return summary


def summarize_rows(rows: Iterable[ResultRow | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`summarize` as ``results.json``'s summary: one dict per entry.

    Each metric gets its mean, ``_std`` and ``_ci95`` over the group's chip instances; rows with
    downstream tasks add ``entry["tasks"] = {"task/metric": {"n", "mean", "std", "ci95"}}``.
    """
    return [entry.to_dict() for entry in summarize(rows)]


def with_recovery(rows: Iterable[ResultRow | Mapping[str, Any]],
                  baseline: str = RECOVERY_BASELINE) -> list[ResultRow]:
    """The rows with ``recovered`` filled in wherever a row carries its noise-free control (``edit_ppl``).

    For a row of chip instance ``(model, device, t_inference, seed)`` with ``edit_ppl`` and
    ``digital_ppl``, and the ``baseline`` row of the same chip instance:
    ``recovered = ((ppl(baseline) - ppl) + edit_ppl) / (ppl(baseline) - digital_ppl)``: the share of
    the baseline's analog gap that the method removes beyond what it changes in the model itself.
    A gain that its edit alone explains gives 0; 1 means the method closes the whole gap by noise
    recovery. Rows without a control, without a baseline row on their chip instance, or on a chip
    where the baseline has no gap (``ppl(baseline) == digital``) keep ``recovered = None``.
    """
    typed = [ResultRow.coerce(r) for r in rows]
    base = {(r.model, r.device, float(r.t_inference), int(r.seed)): r.ppl for r in typed if r.method == baseline}
    out = []
    for r in typed:
        g = base.get((r.model, r.device, float(r.t_inference), int(r.seed)))
        value = None
        if r.edit_ppl is not None and r.digital_ppl is not None and g is not None:
            gap = g - r.digital_ppl
            if math.isfinite(gap) and gap != 0 and math.isfinite(r.ppl):
                value = ((g - r.ppl) + r.edit_ppl) / gap
        out.append(r if value == r.recovered else replace(r, recovered=value))
    return out


def recovery_beyond_edit(rows: Iterable[ResultRow | Mapping[str, Any]], baseline: str = RECOVERY_BASELINE
                         ) -> dict[tuple[str, str, str, float], list[float]]:
    """Per (model, device, method, t_inference): the perplexity each chip instance recovers beyond
    the method's edit, ``(ppl(baseline) - ppl) + edit_ppl``, paired with the baseline row of the same
    chip (rows without a control or a baseline row are skipped).

    The numerator of ``recovered`` in perplexity units: unlike the share, it stays well behaved on
    chips where the baseline's gap is close to zero, so its mean ± CI says whether any recovery
    beyond the edit is resolved.
    """
    typed = [ResultRow.coerce(r) for r in rows]
    base = {(r.model, r.device, float(r.t_inference), int(r.seed)): r.ppl for r in typed if r.method == baseline}
    out: dict[tuple[str, str, str, float], list[float]] = {}
    for r in typed:
        g = base.get((r.model, r.device, float(r.t_inference), int(r.seed)))
        if r.edit_ppl is not None and g is not None and math.isfinite(g) and math.isfinite(r.ppl):
            out.setdefault((r.model, r.device, r.method, float(r.t_inference)), []).append((g - r.ppl) + r.edit_ppl)
    return out


def edit_dominates(edit_ppl: float | None, recovery_ppl: float | None) -> bool:
    """Whether a method's noise-free edit is at least as large as its noise recovery.

    ``recovery_ppl`` is the perplexity recovered beyond the edit (mean over chips of
    ``(ppl(global) - ppl) + edit_ppl``, :func:`recovery_beyond_edit`). True when the edit is not
    zero and ``|edit_ppl| >= recovery_ppl`` (a negative recovery is exceeded by any edit): most of
    what the method changes is the model, not the noise. Reports flag such rows.
    """
    if edit_ppl is None or recovery_ppl is None:
        return False
    if not (math.isfinite(edit_ppl) and math.isfinite(recovery_ppl)) or edit_ppl == 0:
        return False
    return abs(edit_ppl) >= recovery_ppl


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
