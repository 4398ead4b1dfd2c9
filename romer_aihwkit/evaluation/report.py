"""Human-readable reports of a comparison: ``report.md`` and a terminal table.

Both read the results of :func:`~romer_aihwkit.experiments.run_comparison`: a
:class:`~romer_aihwkit.evaluation.records.ComparisonResults` or its ``results.json`` dict
(``{"settings", "rows", "summary"}``); neither needs torch.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .records import ComparisonResults, ResultRow, SummaryEntry
from .stats import RECOVERY_BASELINE, edit_dominates, mean_std_ci, recovery_beyond_edit, task_values

Results = ComparisonResults | Mapping[str, Any]
"""What the report functions accept: typed results or the ``results.json`` dict."""

__all__ = ["control_cells", "controls_table", "edit_flag", "recovery_ppl", "package_versions", "print_summary", "render_report", "write_report",
           "group_summary", "stress_suffix"]

REPORT_FILE = "report.md"

HOW_TO_READ = (
    "Each row is one method evaluated on the same simulated chip instances: a seed draws one "
    "instance (programming noise, then drift to `t_inference`), every method sees the same "
    "instances, and calibrated methods are calibrated per instance on the calibration text, "
    "which is disjoint from the evaluation text. Numbers are the mean over instances; `± CI95` "
    "is the half-width of the Student-t 95 % confidence interval of that mean (it measures how "
    "well the mean is known across chip instances, not the spread of one chip: that is `std`). "
    "With few seeds the interval is wide; overlapping intervals mean the difference is not "
    "resolved. Lower is better for perplexity (`ppl`, the digital model's is the floor), "
    "`load_cv` (std/mean of expert loads, 0 = perfectly balanced) and `max_load_ratio` (busiest "
    "expert's load x E, 1.0 = balanced; it bounds a MoE layer's latency on a CIM chip). Higher "
    "is better for `router_fidelity` (share of the digital router's top-k experts that the "
    "analog router also selects, on the same hidden states; 1.0 = identical routing). "
    "`Δppl` is the relative change of the mean perplexity against the `none` method (plain "
    "analog) of the same model, device and drift time. `replaced` is the mean number of experts "
    "ROMER replaced per chip instance (all layers)."
)

CONTROLS_HOW_TO_READ = (
    "Noise-free controls: every method that edits the model (ROMER's normalization and expert "
    "replacement, hetero, router ensembles, HWA, clipped weights) was also run on the noise-free "
    "`ideal` device with the same calibration data and seed. `edit` is that run's perplexity minus "
    "the digital one: what the method changes in the model itself, with no noise to recover from "
    "(0 for methods that only change the chip). `recovered` is the share of `global`'s analog gap "
    "(`global` − digital on the same chip instance) that the method removes *beyond* its edit, "
    "`((ppl(global) − ppl) + edit) / (ppl(global) − digital)`, mean ± CI95 over chip instances "
    "(paired: one value per chip): 0 means the edit alone explains the gain, 1 closes the gap. "
    "`masked` is the largest share of a MoE layer's experts that calibration masked. "
    "⚠ marks rows whose edit is at least as large as their recovery: |edit| ≥ the mean over chips of "
    "`(ppl(global) − ppl) + edit`, the perplexity recovered beyond the edit (a negative recovery always "
    "counts): most of what such a method changes is the model, not the noise. On chips where `global` "
    "is already close to digital the share is unstable; the recovery in perplexity is not."
)
CONTROLS_OFF = ("Noise-free controls were turned off (`--no-controls`): these results cannot separate a "
                "method's noise recovery from what it changes in the model itself.")


def package_versions() -> dict[str, str]:
    """Versions of python and the packages the numbers depend on (``"not installed"`` if absent)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "aihwkit", "romer-aihwkit"):
        key = dist.replace("-", "_")
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = "not installed"
    return versions


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any, digits: int = 3) -> str:
    if not _isnum(x):
        return "–"
    x = float(x)
    if abs(x) >= 1e5:
        return f"{x:.4g}"
    return f"{x:.{digits}f}"


def _fmt_pm(mean: Any, ci: Any, digits: int = 3) -> str:
    if not _isnum(mean):
        return "–"
    return f"{_fmt(mean, digits)} ± {_fmt(ci, digits)}" if _isnum(ci) else _fmt(mean, digits)


def fmt_seconds(t: Any) -> str:
    """Compact drift time: 3600 -> '1 h', 86400 -> '1 d'."""
    if not _isnum(t):
        return str(t)
    t = float(t)
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size and (t / size).is_integer():
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


def stress_suffix(results: Results) -> str:
    """`` · stress outliers:3x50`` for results of a stressed model (see :mod:`romer_aihwkit.stress`), else ``""``."""
    spec = ComparisonResults.coerce(results).stress
    return f" · stress {spec}" if spec else ""


def group_summary(results: Results) -> dict[tuple[str, str, float], list[SummaryEntry]]:
    """Summary entries grouped by (model, device, t_inference), methods in the settings' order."""
    return ComparisonResults.coerce(results).groups()


def _mean_replaced(rows: Iterable[ResultRow], entry: SummaryEntry) -> float | None:
    values = [r.replaced_experts for r in rows if r.key[:4] == (*entry.group[:2], entry.method, entry.group[2])
              and _isnum(r.replaced_experts)]
    return sum(v for v in values if v is not None) / len(values) if values else None


def _delta_vs_none(entries: list[SummaryEntry], entry: SummaryEntry) -> str:
    base = next((e for e in entries if e.method == "none"), None)
    if base is None or entry.method == "none":
        return "–"
    before, after = base.mean("ppl"), entry.mean("ppl")
    if before is None or after is None or not (_isnum(before) and _isnum(after)):
        return "–"
    delta = 100.0 * (after - before) / before
    return f"{delta:+.1f}%" if abs(delta) >= 1 else f"{delta:+.2f}%"


TABLE_HEADER = ["method", "ppl ± CI95", "ppl std", "Δppl", "load_cv ± CI95", "max_load_ratio ± CI95",
                "tile max load", "router_fidelity ± CI95", "replaced", "n"]
CONTROL_HEADER = ["edit ± CI95", "recovered ± CI95", "masked"]
"""Columns of the noise-free controls, before ``n`` (only for results that have them)."""


def _has_controls(entries: Iterable[SummaryEntry]) -> bool:
    return any("edit_ppl" in e.metrics for e in entries)


def _max_masked(rows: Iterable[ResultRow], entry: SummaryEntry) -> float | None:
    """Mean over chip instances of the largest share of a layer's experts that were masked."""
    values = [max(r.masked_share) for r in rows if r.key[:4] == (*entry.group[:2], entry.method, entry.group[2])
              and r.masked_share]
    return sum(values) / len(values) if values else None


def recovery_ppl(results: ComparisonResults, entry: SummaryEntry) -> dict[str, Any]:
    """Mean, std and CI95 over chip instances of the perplexity ``entry`` recovers beyond its edit
    (paired with ``global`` on each chip; :func:`~.stats.recovery_beyond_edit`)."""

    rows = [r for r in results.rows if (r.model, r.device, float(r.t_inference)) == entry.group
            and r.method in (entry.method, "global")]
    return mean_std_ci(recovery_beyond_edit(rows).get((entry.model, entry.device, entry.method,
                                                        float(entry.t_inference)), []))


def edit_flag(results: ComparisonResults, entries: list[SummaryEntry], entry: SummaryEntry) -> bool:
    """The edit of ``entry`` is at least as large as its recovery (see :func:`~.stats.edit_dominates`)."""

    recovered = recovery_ppl(results, entry)
    return recovered["n"] > 0 and edit_dominates(entry.mean("edit_ppl"), recovered["mean"])


def control_cells(results: ComparisonResults, entries: list[SummaryEntry], entry: SummaryEntry) -> list[str]:
    """``[edit ± CI95, recovered ± CI95 (⚠ if the edit dominates), masked]`` of one summary entry."""
    masked = _max_masked(results.rows, entry)
    recovered = _fmt_pm(entry.mean("recovered"), entry.ci95("recovered"), 2)
    return [_fmt_pm(entry.mean("edit_ppl"), entry.ci95("edit_ppl"), 2),
            recovered + (" ⚠" if edit_flag(results, entries, entry) else ""),
            f"{100 * masked:.0f} %" if masked is not None else "–"]


def controls_table(results: Results, model: str, device: str, t_inference: float,
                   methods: Iterable[str] | None = None) -> list[str]:
    """Markdown lines of one chip group's noise-free controls: per method, its paired difference to
    ``global`` (mean ± CI95 over chip instances), its edit, the share of the gap it recovers beyond
    the edit, the largest masked share of a layer, and ⚠ where the edit is at least the recovery.

    Empty when the results have no controls for this group.
    """

    results = ComparisonResults.coerce(results)
    entries = results.groups().get((model, device, float(t_inference)), [])
    if not _has_controls(entries):
        return []
    wanted = list(methods) if methods is not None else [e.method for e in entries]
    by_method = {e.method: e for e in entries}

    def ppl_by_seed(method: str) -> dict[int, float]:
        return {r.seed: r.ppl for r in results.rows
                if (r.model, r.device, r.method, float(r.t_inference)) == (model, device, method, float(t_inference))}

    base = ppl_by_seed(RECOVERY_BASELINE)
    lines = [f"| method | Δppl vs {RECOVERY_BASELINE} (paired) | edit (ideal − digital) | recovered beyond edit "
             "(ppl, paired) | recovered share of gap | masked | n |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method in wanted:
        entry = by_method.get(method)
        if entry is None:
            continue
        mine = ppl_by_seed(method)
        diffs = [mine[s] - base[s] for s in sorted(mine.keys() & base.keys())]
        delta = mean_std_ci(diffs)
        edit, recovered, masked = control_cells(results, entries, entry)
        delta_cell = (f"{delta['mean']:+.2f}" + (f" ± {delta['ci95']:.2f}" if _isnum(delta["ci95"]) else "")
                      if diffs else "–")
        beyond = recovery_ppl(results, entry)
        beyond_cell = (f"{beyond['mean']:+.2f}" + (f" ± {beyond['ci95']:.2f}" if _isnum(beyond["ci95"]) else "")
                       if beyond["n"] else "–")
        lines.append(f"| {_md_escape(method)} | {delta_cell} | {edit} | {beyond_cell} | {recovered} | {masked} "
                     f"| {entry.n} |")
    return lines


def _table_rows(results: ComparisonResults, entries: list[SummaryEntry]) -> list[list[str]]:
    out = []
    controls = _has_controls(entries)
    for e in entries:
        replaced = _mean_replaced(results.rows, e)
        out.append([
            e.method,
            _fmt_pm(e.mean("ppl"), e.ci95("ppl"), 2),
            _fmt(e.std("ppl"), 2),
            _delta_vs_none(entries, e),
            _fmt_pm(e.mean("load_cv"), e.ci95("load_cv")),
            _fmt_pm(e.mean("max_load_ratio"), e.ci95("max_load_ratio")),
            _fmt(e.mean("tile_max_load_ratio")),
            _fmt_pm(e.mean("router_fidelity"), e.ci95("router_fidelity")),
            _fmt(replaced, 1) if replaced is not None and replaced > 0 else "–",
            *(control_cells(results, entries, e) if controls else []),
            str(e.n),
        ])
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _flat_tasks(tasks: dict[str, dict[str, float]] | None) -> dict[str, float]:
    """``{"task/metric": value}`` of one evaluation (``acc``/``acc_norm``)."""

    return task_values({"tasks": tasks or {}})


def _task_cell(entry: SummaryEntry, name: str) -> str:
    stat = entry.tasks.get(name)
    return _fmt_pm(stat.mean, stat.ci95) if stat is not None else "–"


def _task_table(results: ComparisonResults, model: str, entries: list[SummaryEntry]) -> list[str]:
    """Markdown lines of the downstream-task table of one group (none without tasks)."""
    names = list(dict.fromkeys(name for e in entries for name in e.tasks))
    if not names:
        return []
    digital = _flat_tasks(results.digital_tasks(model))
    lines = ["Downstream tasks (lm-evaluation-harness): accuracy, mean ± CI95 over chip instances "
             "(higher is better).", "",
             "| method | " + " | ".join(_md_escape(n) for n in names) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(names)) + "|"]
    if digital:
        lines.append("| *digital* | " + " | ".join(f"*{_fmt(digital.get(n))}*" for n in names) + " |")
    for e in entries:
        lines.append(f"| {_md_escape(e.method)} | " + " | ".join(_task_cell(e, n) for n in names) + " |")
    return lines + [""]


def _hwa_lines(training: dict[str, dict[str, Any]] | None) -> list[str]:
    """Settings lines on the hardware-aware training runs (their cost)."""
    if not isinstance(training, dict):
        return []
    lines = []
    for key, info in training.items():
        cfg = info.get("config", {})
        lines.append(
            f"- HWA training of `{_md_escape(key)}`: {cfg.get('steps')} steps x {cfg.get('batch_size')} blocks x "
            f"{cfg.get('seq_len')} tokens, lr {cfg.get('lr')}, weight noise {cfg.get('weight_noise')}; "
            f"loss {_fmt(info.get('loss_first'))} -> {_fmt(info.get('loss_last'))}; "
            f"{_fmt(info.get('seconds'), 1)} s; peak memory {_fmt(info.get('peak_memory_mb'), 0)} MiB")
    return lines


def render_report(results: Results, plots: Iterable[str | os.PathLike] = (),
                  base_dir: str | os.PathLike | None = None) -> str:
    """The markdown text of ``report.md``.

    Args:
        results: the results (typed, or the ``results.json`` dict).
        plots: image files to link at the end (paths relative to ``base_dir`` in the links).
        base_dir: the folder the report is written to.
    """
    results = ComparisonResults.coerce(results)
    settings = dict(results.settings)
    lines = ["# romer-aihwkit comparison", ""]
    lines.append(f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
                 f"{len(results.rows)} rows (method x chip instance x drift time).")
    lines += ["", "## How to read this", "", HOW_TO_READ, ""]
    if _has_controls(results.summary):
        lines += [CONTROLS_HOW_TO_READ, ""]
    elif settings.get("controls") is False:
        lines += [CONTROLS_OFF, ""]

    lines += ["## Results", ""]
    groups = results.groups()
    if not groups:
        lines += ["No finished rows yet.", ""]
    for (model, device, t), entries in groups.items():
        lines.append(f"### {_md_escape(model)} · {_md_escape(device)} · t_inference = {fmt_seconds(t)}"
                     f"{_md_escape(stress_suffix(results))}")
        lines.append("")
        digital = results.digital_ppl(model)
        seeds = sorted({s for e in entries for s in e.seeds})
        lines.append(f"Digital perplexity: **{_fmt(digital, 2)}**. Chip instances (seeds): "
                     f"{', '.join(map(str, seeds)) or '–'}.")
        lines.append("")
        header = TABLE_HEADER[:-1] + (CONTROL_HEADER if _has_controls(entries) else []) + TABLE_HEADER[-1:]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in _table_rows(results, entries):
            lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
        lines.append("")
        lines += _task_table(results, model, entries)

    paths = [Path(p) for p in plots]
    if paths:
        lines += ["## Plots", ""]
        for p in paths:
            rel = os.path.relpath(p, base_dir) if base_dir is not None else str(p)
            lines.append(f"![{p.stem}]({Path(rel).as_posix()})")
            lines.append("")

    lines += ["## Settings", ""]
    digital = settings.pop("digital_ppl", None)
    digital_tasks = settings.pop("digital_tasks", None)
    hwa_training = settings.pop("hwa_training", None)
    for k, v in settings.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join("device default" if x is None else str(x) for x in v)
        lines.append(f"- `{k}`: {_md_escape('device default' if v is None else v)}")
    if isinstance(digital, dict):
        for model, value in digital.items():
            lines.append(f"- digital perplexity of `{model}`: {_fmt(value, 3)}")
    if isinstance(digital_tasks, dict):
        for model, tasks in digital_tasks.items():
            accs = ", ".join(f"{name} {_fmt(v, 3)}" for name, v in _flat_tasks(tasks).items())
            lines.append(f"- digital task accuracy of `{model}`: {_md_escape(accs)}")
    lines += _hwa_lines(hwa_training)
    lines += ["", "## Versions", ""]
    lines += [f"- {name}: {version}" for name, version in package_versions().items()]
    lines.append("")
    return "\n".join(lines)


def write_report(results: Results, out_dir: str | os.PathLike,
                 plots: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``out_dir/report.md`` atomically; returns its path."""
    out_dir = Path(out_dir)
    path = out_dir / REPORT_FILE
    atomic_write_text(path, render_report(results, plots=plots, base_dir=out_dir))
    return path


def print_summary(results: Results, console: Any = None) -> None:
    """Print the summary as rich tables, one per (model, device, t_inference).

    Compact for a terminal: means of every metric, the 95 % CI and std of perplexity only
    (``report.md`` has the CI of every metric).
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    results = ComparisonResults.coerce(results)
    groups = results.groups()
    if not groups:
        console.print("no finished rows")
        return
    wide = console.width >= 110
    for (model, device, t), entries in groups.items():
        digital = results.digital_ppl(model)
        counts = sorted({e.n for e in entries})
        seeds = f"{counts[0]} chip instances" if len(counts) == 1 else "n varies"
        title = (f"{escape(model)} · {escape(device)} · t_inference {fmt_seconds(t)}{escape(stress_suffix(results))} · "
                 f"{seeds} · digital ppl {_fmt(digital, 2)}")
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False)
        replaced = {e.method: _mean_replaced(results.rows, e) for e in entries}
        show_replaced = any(replaced.values())
        controls = _has_controls(entries)
        narrow = console.width < 100
        # on a narrow terminal the controls' columns take the place of Δppl and the load columns (in report.md)
        loads = not (narrow and controls)
        headers = ["method", "ppl", "±CI" if narrow else "±CI95", *(["std"] if wide else []),
                   *(["Δppl", "load_cv", "max_load"] if loads else []), "fidelity", *([("repl." if narrow else "replaced")] if show_replaced else []),
                   *(["edit", "recov." if narrow else "recovered"] if controls else []),
                   *(["n"] if len(counts) > 1 else [])]
        for i, header in enumerate(headers):
            if i == 0:
                table.add_column(header, style="bold", no_wrap=True, min_width=max(len(e.method) for e in entries))
            else:
                table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
        best = _best_method(entries)
        for e in entries:
            cells = [e.method, _fmt(e.mean("ppl"), 2), _fmt(e.ci95("ppl"), 2),
                     *([_fmt(e.std("ppl"), 2)] if wide else []),
                     *([_delta_vs_none(entries, e), _fmt(e.mean("load_cv")), _fmt(e.mean("max_load_ratio"))]
                       if loads else []),
                     _fmt(e.mean("router_fidelity")),
                     *([_fmt(replaced[e.method], 1) if replaced[e.method] else "–"] if show_replaced else []),
                     *(_terminal_controls(results, entries, e) if controls else []),
                     *([str(e.n)] if len(counts) > 1 else [])]
            for col, cell in zip(table.columns[1:], cells[1:]):
                col.min_width = max(col.min_width or 0, len(cell))
            table.add_row(*(escape(c) for c in cells), style="green" if e.method == best else None)
        console.print(table)
        _print_tasks(console, results, model, entries)
    console.print("Means over chip instances; ±CI: half-width of the 95 % confidence interval of the mean ppl. "
                  "Lower ppl, load_cv, max_load (ratio) are better; higher (router) fidelity is better; best ppl "
                  "in green. repl.: experts ROMER replaced per chip instance.")
    if _has_controls(results.summary):
        console.print("edit: the method on the noise-free `ideal` device minus digital ppl (what it changes in the "
                      "model itself); recovered: share of global's analog gap removed beyond the edit (± CI95, "
                      "paired per chip); ! marks an edit at least as large as the recovery.")
    elif results.settings.get("controls") is False:
        console.print(CONTROLS_OFF)


def _terminal_controls(results: ComparisonResults, entries: list[SummaryEntry], e: SummaryEntry) -> list[str]:
    flag = " !" if edit_flag(results, entries, e) else ""
    return [_fmt(e.mean("edit_ppl"), 2), _fmt_pm(e.mean("recovered"), e.ci95("recovered"), 2) + flag]


def _print_tasks(console: Any, results: ComparisonResults, model: str, entries: list[SummaryEntry]) -> None:
    """The downstream-task accuracies of one group as a compact table (nothing without tasks)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    names = list(dict.fromkeys(name for e in entries for name in e.tasks))
    if not names:
        return
    digital = _flat_tasks(results.digital_tasks(model))
    table = Table(title="downstream tasks: accuracy ± CI95", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    table.add_column("method", style="bold")
    for name in names:
        table.add_column(escape(name), justify="right")
    if digital:
        table.add_row("digital", *(_fmt(digital.get(n)) for n in names), style="dim")
    for e in entries:
        table.add_row(escape(e.method), *(_task_cell(e, n) for n in names))
    console.print(table)


def _best_method(entries: list[SummaryEntry]) -> str | None:
    scored = [(float(ppl), e.method) for e in entries if (ppl := e.mean("ppl")) is not None and _isnum(ppl)]
    return min(scored, key=lambda pair: pair[0])[1] if scored else None
