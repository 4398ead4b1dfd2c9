"""PNG plots of a comparison (matplotlib, Agg backend).

* :func:`plot_layer_loads` — per-layer expert load of one model/device/drift time: clean (digital
  routing on the same hidden states), noisy (method ``none``) and calibrated (method ``romer``),
  averaged over chip instances.
* :func:`plot_ppl_by_method` — perplexity by method with 95 % CI error bars and the digital
  perplexity as a dashed line.
* :func:`plot_ppl_vs_drift` — perplexity against drift time (log axis) per method.
* :func:`plot_recovery` — the noise-free controls: each method's edit (its perplexity on the
  ``ideal`` device minus digital) next to the share of ``global``'s analog gap it recovers beyond
  that edit, with 95 % CIs; methods whose edit is at least as large as their recovery in red.
* :func:`plot_task_accuracy` — downstream-task accuracy by method with 95 % CI error bars, one panel
  per task metric, the digital model's accuracy as a dashed line.

:func:`write_plots` writes all that the data allows and returns the paths; a plot whose data is
absent (no ``romer`` rows, one drift time only) is skipped, not an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..outputs import COMPARISON_PLOTS
from .records import ComparisonResults, ResultRow, SummaryEntry, load_rows, rows_of
from .report import Results, edit_flag, fmt_seconds, stress_suffix

__all__ = ["plot_layer_loads", "plot_ppl_by_method", "plot_ppl_vs_drift", "plot_recovery", "plot_task_accuracy",
           "write_plots", "model_slugs"]


def _pyplot():
    # No backend is forced: headless runs get Agg automatically, and a notebook keeps inline display.
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save ``fig`` to ``path`` atomically and close it."""

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    finally:
        _pyplot().close(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-._") or "model"


def model_slugs(models: Iterable[str]) -> dict[str, str]:
    """Short file-name-safe names of models (folder basenames; disambiguated if they collide)."""
    models = list(dict.fromkeys(models))
    base = {m: _slug(Path(m.rstrip("/")).name or m) for m in models}
    out = {}
    for i, m in enumerate(models):
        out[m] = base[m] if list(base.values()).count(base[m]) == 1 else f"{base[m]}-{i}"
    return out


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean_loads(rows: list[ResultRow], field: str) -> list[list[float]] | None:
    """Per-layer per-expert ``field`` averaged over rows; ``None`` if rows have no per-layer data."""
    per_row = [r.layers for r in rows if r.layers]
    if not per_row:
        return None
    n_layers = len(per_row[0])
    out = []
    for li in range(n_layers):
        vectors = [layers[li][field] for layers in per_row if li < len(layers) and layers[li].get(field)]
        if not vectors:
            return None
        e = len(vectors[0])
        out.append([sum(v[j] for v in vectors) / len(vectors) for j in range(e)])
    return out


def plot_layer_loads(rows: Iterable[ResultRow | Mapping[str, Any]], model: str, device: str, t_inference: float,
                     path: str | os.PathLike) -> Path | None:
    """Bar groups per expert (clean / noisy / calibrated), one subplot per MoE layer.

    ``rows`` are runner rows carrying per-layer loads (as in ``rows*.jsonl``). Clean is the digital
    router's load on the same hidden states (``reference_load``), noisy is method ``none``,
    calibrated is method ``romer``; each averaged over chip instances. Returns ``None`` (nothing
    written) when there are no ``romer`` rows with per-layer loads for this model/device/time.
    """
    typed = rows_of(rows)

    def select(method: str) -> list[ResultRow]:
        return [r for r in typed if r.key[:4] == (model, device, method, float(t_inference)) and r.layers]

    romer_rows, none_rows = select("romer"), select("none")
    calibrated = _mean_loads(romer_rows, "load")
    if calibrated is None:
        return None
    clean = _mean_loads(none_rows or romer_rows, "reference_load")
    noisy = _mean_loads(none_rows, "load") if none_rows else None
    series = [(name, loads, color) for name, loads, color in (
        ("clean (digital router)", clean, "#4c72b0"),
        ("noisy (none)", noisy, "#dd8452"),
        ("calibrated (romer)", calibrated, "#55a868"),
    ) if loads is not None]

    plt = _pyplot()
    n_layers = len(calibrated)
    n_experts = max(len(v) for v in calibrated)
    ncols = 1 if n_experts > 16 else min(2, n_layers)
    nrows = math.ceil(n_layers / ncols)
    width = max(6.0, min(24.0, 0.3 * n_experts * len(series) / 2 + 2)) * (1 if ncols == 1 else 0.75)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 2.4 * nrows + 0.6), squeeze=False,
                             sharey=True)
    bar = 0.8 / len(series)
    for li in range(nrows * ncols):
        ax = axes[li // ncols][li % ncols]
        if li >= n_layers:
            ax.axis("off")
            continue
        e = len(calibrated[li])
        for si, (name, loads, color) in enumerate(series):
            xs = [j + (si - (len(series) - 1) / 2) * bar for j in range(e)]
            ax.bar(xs, loads[li], width=bar, color=color, label=name if li == 0 else None)
        ax.axhline(1.0 / e, color="black", linestyle="--", linewidth=0.8,
                   label="balanced (1/E)" if li == 0 else None)
        ax.set_title(f"MoE layer {li}", fontsize=9)
        ax.set_xticks(range(e) if e <= 32 else range(0, e, max(1, e // 16)))
        ax.tick_params(labelsize=7)
        ax.set_xlim(-0.6, e - 0.4)
        if li % ncols == 0:
            ax.set_ylabel("load (share of top-k slots)", fontsize=8)
        if li >= n_layers - ncols:
            ax.set_xlabel("expert", fontsize=8)
    n_seeds = len({r.seed for r in romer_rows})
    stress = romer_rows[0].stress or "none"
    fig.suptitle(f"Expert load per MoE layer — {Path(model).name or model}, {device}, "
                 f"t = {fmt_seconds(t_inference)}, mean over {n_seeds} chip instance(s)"
                 f"{'' if stress == 'none' else f', stress {stress}'}", fontsize=10)
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(series) + 1, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, Path(path))


def _summary_of(results: ComparisonResults, model: str, device: str) -> list[SummaryEntry]:
    return [e for (m, d, _), entries in results.groups().items() if (m, d) == (model, device)
            for e in entries]


def _ppl_ci(entry: SummaryEntry) -> float:
    ci = entry.ci95("ppl")
    return float(ci) if ci is not None and _isnum(ci) else 0.0


def _ppl(entry: SummaryEntry) -> float:
    return float(entry.mean("ppl"))  # type: ignore[arg-type]  # callers keep entries with a finite ppl


def plot_ppl_by_method(results: Results, model: str, device: str,
                       path: str | os.PathLike) -> Path | None:
    """Perplexity by method, mean with 95 % CI error bars (grouped by drift time if several)."""
    results = ComparisonResults.coerce(results)
    entries = [e for e in _summary_of(results, model, device) if _isnum(e.mean("ppl"))]
    if not entries:
        return None
    plt = _pyplot()
    methods = list(dict.fromkeys(e.method for e in entries))
    times = sorted({float(e.t_inference) for e in entries})
    width = 0.8 / len(times)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(methods) * max(1, len(times) * 0.6) + 1.5), 3.8))
    cmap = plt.get_cmap("viridis")
    for ti, t in enumerate(times):
        xs, ys, errs = [], [], []
        for mi, method in enumerate(methods):
            found = next((e for e in entries if e.method == method and float(e.t_inference) == t), None)
            if found is None:
                continue
            xs.append(mi + (ti - (len(times) - 1) / 2) * width)
            ys.append(_ppl(found))
            errs.append(_ppl_ci(found))
        color = cmap(0.25 + 0.5 * ti / max(1, len(times) - 1)) if len(times) > 1 else "#4c72b0"
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, color=color,
               label=f"t = {fmt_seconds(t)}" if len(times) > 1 else None)
    digital = results.digital_ppl(model)
    if digital is not None:
        ax.axhline(digital, color="black", linestyle="--", linewidth=1, label=f"digital ({digital:.2f})")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("perplexity (mean ± 95 % CI)")
    low = min([_ppl(e) - _ppl_ci(e) for e in entries] + ([digital] if digital is not None else []))
    high = max(_ppl(e) + _ppl_ci(e) for e in entries)
    pad = 0.1 * max(high - low, 1e-6 * max(abs(high), 1.0))
    ax.set_ylim(max(0.0, low - pad), high + pad)
    title_t = "" if len(times) > 1 else f", t = {fmt_seconds(times[0])}"
    ax.set_title(f"Perplexity by method — {Path(model).name or model}, {device}{title_t}{stress_suffix(results)}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_ppl_vs_drift(results: Results, model: str, device: str,
                      path: str | os.PathLike) -> Path | None:
    """Perplexity against drift time (log x axis), one line per method; ``None`` if < 2 drift times."""
    results = ComparisonResults.coerce(results)
    entries = [e for e in _summary_of(results, model, device) if _isnum(e.mean("ppl"))]
    times = sorted({float(e.t_inference) for e in entries})
    if len(times) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    methods = list(dict.fromkeys(e.method for e in entries))
    for mi, method in enumerate(methods):
        points = sorted((float(e.t_inference), _ppl(e), _ppl_ci(e)) for e in entries if e.method == method)
        dodge = 10 ** (0.02 * (mi - (len(methods) - 1) / 2))  # spread overlapping error bars a little
        ax.errorbar([p[0] * dodge for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=method)
    digital = results.digital_ppl(model)
    if digital is not None:
        ax.axhline(digital, color="black", linestyle="--", linewidth=1, label="digital")
    ax.set_xscale("log")
    ax.set_xticks(times)
    ax.set_xticklabels([fmt_seconds(t) for t in times], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("drift time t_inference")
    ax.set_ylabel("perplexity (mean ± 95 % CI)")
    ax.set_title(f"Perplexity vs drift — {Path(model).name or model}, {device}{stress_suffix(results)}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_recovery(results: Results, model: str, device: str, path: str | os.PathLike) -> Path | None:
    """Edit vs recovery of every method (noise-free controls); ``None`` for results without controls.

    Left: ``edit_ppl`` (the method on the ``ideal`` device minus digital perplexity). Right:
    ``recovered`` (share of ``global``'s analog gap removed beyond the edit), both mean ± 95 % CI
    over chip instances. Bars of methods whose edit is at least as large as their recovery are red.
    With several drift times, the first one is plotted (the report has every table).
    """
    results = ComparisonResults.coerce(results)
    entries = [e for e in _summary_of(results, model, device) if "edit_ppl" in e.metrics]
    if not entries:
        return None
    t0 = min(float(e.t_inference) for e in entries)
    group = results.groups().get((model, device, t0), [])
    entries = [e for e in entries if float(e.t_inference) == t0]
    methods = [e.method for e in entries]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(methods) + 3.0), 3.8))
    colors = ["#c44e52" if edit_flag(results, group, e) else "#4c72b0" for e in entries]
    for ax, metric, label in ((axes[0], "edit_ppl", "edit: ppl on ideal − digital"),
                              (axes[1], "recovered", "recovered share of global's gap (beyond edit)")):
        ys = [e.mean(metric) for e in entries]
        ys = [float(y) if y is not None and _isnum(y) else math.nan for y in ys]
        errs = [float(c) if (c := e.ci95(metric)) is not None and _isnum(c) else 0.0 for e in entries]
        ax.bar(range(len(methods)), ys, yerr=errs, capsize=3, color=colors)
        ax.axhline(0.0, color="black", linewidth=0.8)
        if metric == "recovered":
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="whole gap (1.0)")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{label}\n(mean ± 95 % CI)", fontsize=8)
    fig.suptitle(f"Noise-free controls — {Path(model).name or model}, {device}, t = {fmt_seconds(t0)}"
                 f"{stress_suffix(results)} (red: edit ≥ recovery)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_task_accuracy(results: Results, model: str, device: str,
                       path: str | os.PathLike) -> Path | None:
    """Task accuracy by method (mean ± 95 % CI), one panel per ``task/metric``; ``None`` without tasks.

    With several drift times, the first one is plotted (the report has every table).
    """
    results = ComparisonResults.coerce(results)
    entries = [e for e in _summary_of(results, model, device) if e.tasks]
    if not entries:
        return None
    t0 = min(float(e.t_inference) for e in entries)
    entries = [e for e in entries if float(e.t_inference) == t0]
    names = list(dict.fromkeys(n for e in entries for n in e.tasks))
    digital = results.digital_tasks(model)
    plt = _pyplot()
    methods = [e.method for e in entries]
    fig, axes = plt.subplots(1, len(names), figsize=(max(4.0, 0.6 * len(methods) + 1.5) * len(names), 3.6),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        task, _, metric = name.rpartition("/")
        stats = [e.tasks.get(name) for e in entries]
        ys = [math.nan if s is None else float(s.mean) for s in stats]
        errs = [float(s.ci95) if s is not None and _isnum(s.ci95) else 0.0 for s in stats]
        ax.bar(range(len(methods)), ys, yerr=errs, capsize=3, color="#55a868")
        raw = (digital.get(task) or {}).get(metric)
        ref = float(raw) if raw is not None and _isnum(raw) else None
        if ref is not None:
            ax.axhline(ref, color="black", linestyle="--", linewidth=1, label=f"digital ({ref:.3f})")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(name, fontsize=9)
        finite = [y for y in ys if _isnum(y)] + ([ref] if ref is not None else [])
        if finite:
            pad = max(0.02, 0.2 * (max(finite) - min(finite)))
            ax.set_ylim(max(0.0, min(finite) - pad - max(errs)), min(1.0, max(finite) + pad + max(errs)))
    axes[0][0].set_ylabel("accuracy (mean ± 95 % CI)")
    fig.suptitle(f"Downstream tasks — {Path(model).name or model}, {device}, t = {fmt_seconds(t0)}", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def write_plots(results: Results, out_dir: str | os.PathLike,
                rows: Iterable[ResultRow | Mapping[str, Any]] | None = None) -> list[Path]:
    """Write every plot the data allows into ``out_dir``; returns the paths written.

    Args:
        results: the results (typed, or the ``results.json`` dict).
        out_dir: output folder.
        rows: rows with per-layer loads (``layers``); default: read ``out_dir/rows*.jsonl``,
            else the results' rows.
    """
    results = ComparisonResults.coerce(results)
    out_dir = Path(out_dir)
    if rows is None:
        typed = load_rows(out_dir) if out_dir.is_dir() else []
        if not any(r.layers for r in typed):
            typed = list(results.rows)
    else:
        typed = rows_of(rows)
    written: list[Path] = []
    keys = list(results.groups())
    slugs = model_slugs(k[0] for k in keys)
    pairs = list(dict.fromkeys((m, d) for m, d, _ in keys))
    for model, device in pairs:
        stem = f"{slugs[model]}_{_slug(device)}"
        times = [t for m, d, t in keys if (m, d) == (model, device)]
        for t in times:
            suffix = "" if len(times) == 1 else f"_t{t:g}"
            p = plot_layer_loads(typed, model, device, t, out_dir / f"{COMPARISON_PLOTS[0]}_{stem}{suffix}.png")
            if p is not None:
                written.append(p)
        per_pair = {"ppl_by_method": plot_ppl_by_method, "ppl_vs_drift": plot_ppl_vs_drift,
                    "recovery": plot_recovery, "task_accuracy": plot_task_accuracy}
        for name in COMPARISON_PLOTS:
            if name == "expert_load":  # one per drift time, above
                continue
            p = per_pair[name](results, model, device, out_dir / f"{name}_{stem}.png")
            if p is not None:
                written.append(p)
    return written
