"""Aggregation over chip instances: mean, std and 95 % confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .records import GROUP_KEYS, METRICS, TASK_METRICS, ResultRow, Stat, SummaryEntry

__all__ = ["mean_std_ci", "summarize", "summarize_rows", "task_values", "METRICS", "GROUP_KEYS", "TASK_METRICS"]


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
    (NaN and absent values skipped); rows with downstream tasks add ``tasks`` per ``"task/metric"``.
    """
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        typed = ResultRow.coerce(row)
        groups.setdefault(tuple(getattr(typed, k) for k in GROUP_KEYS), []).append(typed)
    summary = []
    for key, members in groups.items():
        metrics = {}
        for metric in METRICS:
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


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
