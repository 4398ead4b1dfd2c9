"""Aggregation over chip instances: mean, std and 95 % confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["mean_std_ci", "summarize_rows", "task_values", "METRICS", "GROUP_KEYS", "TASK_METRICS"]

METRICS = ("ppl", "load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity", "load_entropy")
GROUP_KEYS = ("model", "device", "method", "t_inference")
TASK_METRICS = ("acc", "acc_norm")
"""Downstream-task metrics summarised over chip instances (rows keep lm-eval's stderr too)."""


def task_values(row: dict[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` of a row's downstream tasks (``acc``, ``acc_norm``), empty without tasks."""
    return {f"{task}/{metric}": float(value) for task, metrics in (row.get("tasks") or {}).items()
            for metric, value in metrics.items() if metric in TASK_METRICS and value is not None}


def _t_quantile(df: int, p: float = 0.975) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(p, df))
    except ImportError:  # pragma: no cover - scipy ships with aihwkit
        return 1.959963984540054


def mean_std_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
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


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary entry per (model, device, method, t_inference), in first-seen order.

    Each metric gets its mean, ``_std`` and ``_ci95`` over the group's chip instances; rows with
    downstream tasks add ``entry["tasks"] = {"task/metric": {"n", "mean", "std", "ci95"}}``.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP_KEYS), []).append(row)
    summary = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        entry["seeds"] = sorted(r["seed"] for r in members)
        for metric in METRICS:
            values = [r[metric] for r in members if r.get(metric) is not None and not _isnan(r[metric])]
            stats = mean_std_ci(values)
            entry[metric] = stats["mean"]
            entry[f"{metric}_std"] = stats["std"]
            entry[f"{metric}_ci95"] = stats["ci95"]
            entry["n"] = stats["n"] if metric == "ppl" else entry.get("n", stats["n"])
        per_row = [task_values(r) for r in members]
        names = list(dict.fromkeys(name for values in per_row for name in values))
        if names:
            entry["tasks"] = {name: mean_std_ci(v[name] for v in per_row if name in v) for name in names}
        summary.append(entry)
    return summary


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
