"""Condense a comparison's results.json into the README's markdown tables.

Run: python scripts/results_table.py docs/results/compare/results.json [--metric ppl]
Prints one table per device: methods as rows, models as columns, `mean ± 95 % CI` over chip instances.
`--metric edit_ppl` / `--metric recovered` tabulate the noise-free controls the same way;
`--controls` prints, per model and device, each method's paired difference to `global`, its edit,
the share of the gap recovered beyond the edit and the masked share, flagging (⚠) edits at least
as large as the recovery.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from romer_aihwkit.evaluation.records import ComparisonResults, ResultRow, SummaryEntry
from romer_aihwkit.evaluation.report import controls_table
from romer_aihwkit.evaluation.stats import mean_std_ci


def fmt(entry: SummaryEntry, metric: str) -> str:
    mean, ci = entry.mean(metric), entry.ci95(metric)
    if "/" in metric:  # a downstream task's "task/acc": summarised under the entry's tasks
        stat = entry.tasks.get(metric)
        mean, ci = (None, None) if stat is None else (stat.mean, stat.ci95)
    if mean is None:
        return "–"
    digits = 2 if metric in ("ppl", "edit_ppl", "recovered") else 3
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if ci == ci and ci is not None else f"{mean:.{digits}f}"


def _by_seed(rows: tuple[ResultRow, ...], model: str, device: str, t: float, method: str,
             metric: str) -> dict[int, float | None]:
    """``{seed: metric}`` of one method's rows (a task's ``task/acc`` from the row's tasks)."""
    return {r.seed: (r.task_values().get(metric) if "/" in metric else r.metric(metric)) for r in rows
            if (r.model, r.device, r.method, r.t_inference) == (model, device, method, t)}


def paired(rows: tuple[ResultRow, ...], model: str, device: str, t: float, method: str, baseline: str,
           metric: str) -> str:
    """Mean ± 95 % CI of the per-chip-instance difference method - baseline (same seeds)."""
    def by_seed(name: str) -> dict[int, float | None]:
        return _by_seed(rows, model, device, t, name, metric)

    a, b = by_seed(method), by_seed(baseline)
    diffs = [x - y for x, y in ((a[s], b[s]) for s in sorted(a.keys() & b.keys())) if x is not None and y is not None]
    if not diffs:
        return "–"
    st = mean_std_ci(diffs)
    digits = 2 if metric in ("ppl", "edit_ppl", "recovered") else 3
    ci = f" ± {st['ci95']:.{digits}f}" if st["ci95"] == st["ci95"] else ""
    return f"{st['mean']:+.{digits}f}{ci}"


def recovered_share(rows: tuple[ResultRow, ...], model: str, device: str, t: float, method: str, baseline: str,
                    upper: str, metric: str, digital: dict | None = None) -> tuple[float, bool] | None:
    """``(share, weak)``: mean(baseline - method) / mean(baseline - upper) over the common chip
    instances; ``weak`` when the ``upper`` gain's 95 % CI includes 0. ``upper = "digital"`` (not a
    method of the rows) is the digital model's value (``digital[model]``) on every chip instance:
    the share of the whole analog gap."""
    def by_seed(name: str) -> dict[int, float]:
        return {s: v for s, v in _by_seed(rows, model, device, t, name, metric).items() if v is not None}

    m, b = by_seed(method), by_seed(baseline)
    u = by_seed(upper)
    if not u and upper == "digital" and digital and model in digital:
        u = {s: float(digital[model]) for s in b}
    seeds = sorted(m.keys() & b.keys() & u.keys())
    if not seeds:
        return None
    gain = mean_std_ci([b[s] - u[s] for s in seeds])
    if gain["mean"] == 0:
        return None
    share = sum(b[s] - m[s] for s in seeds) / len(seeds) / gain["mean"]
    weak = gain["ci95"] == gain["ci95"] and abs(gain["mean"]) <= gain["ci95"]
    return share, weak


def recovered(rows: tuple[ResultRow, ...], model: str, device: str, t: float, method: str, baseline: str,
              upper: str, metric: str, digital: dict | None = None) -> str:
    """:func:`recovered_share` in %; ``n.s.`` marks an ``upper`` gain whose 95 % CI includes 0."""
    found = recovered_share(rows, model, device, t, method, baseline, upper, metric, digital)
    if found is None:
        return "–"
    share, weak = found
    return f"{100 * share:.0f} %" + (" (n.s.)" if weak else "")


def mean_share(rows: tuple[ResultRow, ...], columns: list, device: str, method: str, baseline: str, upper: str,
               metric: str, digital: dict | None) -> float:
    """Mean :func:`recovered_share` of ``method`` over the table's columns (``-inf`` without any)."""
    found = [recovered_share(rows, m, device, t, method, baseline, upper, metric, digital) for _, m, t in columns]
    values = [f[0] for f in found if f is not None]
    return sum(values) / len(values) if values else float("-inf")


def cost_note(rows: tuple[ResultRow, ...], model: str, device: str, t: float, method: str) -> str:
    """`` · D % digital`` (the rows' largest ``digital_fraction``) and `` → CHOICE`` (``best``'s choices)."""
    mine = [r for r in rows if (r.model, r.device, r.method, r.t_inference) == (model, device, method, t)]
    fractions = [r.extra["digital_fraction"] for r in mine if isinstance(r.extra.get("digital_fraction"), (int, float))]
    choices = sorted({str(r.extra["choice"]) for r in mine if r.extra.get("choice")})
    note = f" · {100 * max(fractions):.2g} % digital" if fractions and max(fractions) > 0 else ""
    return note + (f" → {', '.join(choices)}" if choices else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--metric", default="ppl",
                    help="ppl, load_cv, max_load_ratio, router_fidelity, ..., or a task's TASK/acc, TASK/acc_norm")
    ap.add_argument("--paired-vs", metavar="METHOD", default=None,
                    help="show per-chip-instance differences against METHOD instead of raw means")
    ap.add_argument("--columns", choices=("model", "t"), default="model", help="one column per model or per drift time")
    ap.add_argument("--methods", default=None, help="comma-separated subset of methods (rows), in this order")
    ap.add_argument("--recovered", metavar="BASELINE:UPPER", default=None,
                    help="show the share of UPPER's paired gain over BASELINE that each method recovers "
                         "(UPPER 'digital': the digital model, i.e. the share of the whole analog gap)")
    ap.add_argument("--cost", action="store_true",
                    help="with --recovered: append each method's digital share of the MoE parameters and best's choice")
    ap.add_argument("--rank", action="store_true",
                    help="with --recovered: order the methods by their mean recovered share over the columns")
    ap.add_argument("--controls", action="store_true",
                    help="noise-free controls per model and device: paired Δppl vs global, edit, recovered, masked")
    args = ap.parse_args()
    res = ComparisonResults.load(args.results)
    settings = res.settings
    if args.controls:
        print_controls(res, args.methods.split(",") if args.methods else None)
        return
    for device in settings["devices"]:
        entries = [e for e in res.summary if e.device == device]
        models = [m for m in settings["models"] if any(e.model == m for e in entries)]
        times = sorted({e.t_inference for e in entries})
        if args.columns == "t":
            groups = [(m, [(f"{t:g} s", m, t) for t in times]) for m in models]
        else:
            groups = [(f"t = {t:g} s", [(m, m, t) for m in models]) for t in times]
        for title, columns in groups:
            n = len(settings["seeds"])
            what = f"{args.metric} minus `{args.paired_vs}` on the same chip instance" if args.paired_vs else args.metric
            if args.recovered:
                base, upper = args.recovered.split(":")
                what = f"share of the `{upper}` gain over `{base}` recovered ({args.metric}, paired)"
            stress = settings.get("stress") or "none"
            label = "" if stress == "none" else f", stress `{stress}`"
            stat = "" if args.recovered else ", mean ± 95 % CI"
            print(f"\n**{device}, {title}{label}**: {what}{stat} over {n} chip instances\n")
            print("| method | " + " | ".join(c[0] for c in columns) + " |")
            print("|---|" + "---:|" * len(columns))
            if args.metric == "ppl" and not args.paired_vs and not args.recovered:
                digital = settings.get("digital_ppl", {})
                print("| *digital* | " + " | ".join(f"*{digital[m]:.2f}*" if m in digital else "–" for _, m, _ in columns) + " |")
            if "/" in args.metric and not args.paired_vs:
                task, _, name = args.metric.rpartition("/")
                digital = {m: v.get(task, {}).get(name) for m, v in settings.get("digital_tasks", {}).items()}
                print("| *digital* | " + " | ".join(f"*{digital[m]:.3f}*" if digital.get(m) is not None else "–"
                                                   for _, m, _ in columns) + " |")
            methods = args.methods.split(",") if args.methods else list(settings["methods"])
            digital_ppl = settings.get("digital_ppl", {}) if args.metric == "ppl" else {}
            if args.recovered and args.rank:
                methods.sort(key=lambda method: mean_share(res.rows, columns, device, method, base, upper, args.metric,
                                                          digital_ppl), reverse=True)
            for method in methods:
                cells = []
                for _, m, t in columns:
                    if args.recovered:
                        cell = recovered(res.rows, m, device, t, method, base, upper, args.metric, digital_ppl)
                        cells.append(cell + (cost_note(res.rows, m, device, t, method) if args.cost else ""))
                        continue
                    if args.paired_vs:
                        cells.append(paired(res.rows, m, device, t, method, args.paired_vs, args.metric))
                        continue
                    match = [e for e in entries if e.model == m and e.method == method and e.t_inference == t]
                    cells.append(fmt(match[0], args.metric) if match else "–")
                print(f"| {method} | " + " | ".join(cells) + " |")


def print_controls(res: ComparisonResults, methods: list[str] | None) -> None:
    """One controls table per (model, device, drift time); a note when the results have none."""
    settings = res.settings
    printed = False
    for (model, device, t) in res.groups():
        lines = controls_table(res, model, device, t, methods)
        if not lines:
            continue
        printed = True
        n = len(settings.get("seeds") or [])
        print(f"\n**{model}, {device}, t = {t:g} s**: noise-free controls, mean ± 95 % CI over {n} chip instances\n")
        print("\n".join(lines))
    if not printed:
        state = "were turned off" if settings.get("controls") is False else "were not run (results predate them)"
        print(f"\nNoise-free controls {state}: edit and recovery cannot be separated in these results.")


if __name__ == "__main__":
    main()
