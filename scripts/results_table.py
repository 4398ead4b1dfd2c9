"""Condense a comparison's results.json into the README's markdown tables.

Run: python scripts/results_table.py docs/results/compare/results.json [--metric ppl]
Prints one table per device: methods as rows, models as columns, `mean ± 95 % CI` over chip instances.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(entry: dict, metric: str) -> str:
    mean, ci = entry.get(metric), entry.get(f"{metric}_ci95")
    if mean is None:
        return "–"
    digits = 2 if metric == "ppl" else 3
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if ci == ci and ci is not None else f"{mean:.{digits}f}"


def paired(rows: list[dict], model: str, device: str, t: float, method: str, baseline: str, metric: str) -> str:
    """Mean ± 95 % CI of the per-chip-instance difference method - baseline (same seeds)."""
    from romer_aihwkit.evaluation.stats import mean_std_ci

    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: r[metric] for r in rows
                if (r["model"], r["device"], r["method"], r["t_inference"]) == (model, device, name, t)}

    a, b = by_seed(method), by_seed(baseline)
    diffs = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    if not diffs:
        return "–"
    st = mean_std_ci(diffs)
    digits = 2 if metric == "ppl" else 3
    ci = f" ± {st['ci95']:.{digits}f}" if st["ci95"] == st["ci95"] else ""
    return f"{st['mean']:+.{digits}f}{ci}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--metric", default="ppl", help="ppl, load_cv, max_load_ratio, router_fidelity, ...")
    ap.add_argument("--paired-vs", metavar="METHOD", default=None,
                    help="show per-chip-instance differences against METHOD instead of raw means")
    ap.add_argument("--columns", choices=("model", "t"), default="model", help="one column per model or per drift time")
    args = ap.parse_args()
    res = json.loads(args.results.read_text())
    settings, summary = res["settings"], res["summary"]
    for device in settings["devices"]:
        entries = [e for e in summary if e["device"] == device]
        models = [m for m in settings["models"] if any(e["model"] == m for e in entries)]
        times = sorted({e["t_inference"] for e in entries})
        if args.columns == "t":
            groups = [(m, [(f"{t:g} s", m, t) for t in times]) for m in models]
        else:
            groups = [(f"t = {t:g} s", [(m, m, t) for m in models]) for t in times]
        for title, columns in groups:
            n = len(settings["seeds"])
            what = f"{args.metric} minus `{args.paired_vs}` on the same chip instance" if args.paired_vs else args.metric
            stress = settings.get("stress") or "none"
            label = "" if stress == "none" else f", stress `{stress}`"
            print(f"\n**{device}, {title}{label}**: {what}, mean ± 95 % CI over {n} chip instances\n")
            print("| method | " + " | ".join(c[0] for c in columns) + " |")
            print("|---|" + "---:|" * len(columns))
            if args.metric == "ppl" and not args.paired_vs:
                digital = settings.get("digital_ppl", {})
                print("| *digital* | " + " | ".join(f"*{digital[m]:.2f}*" if m in digital else "–" for _, m, _ in columns) + " |")
            for method in settings["methods"]:
                cells = []
                for _, m, t in columns:
                    if args.paired_vs:
                        cells.append(paired(res["rows"], m, device, t, method, args.paired_vs, args.metric))
                        continue
                    match = [e for e in entries if e["model"] == m and e["method"] == method and e["t_inference"] == t]
                    cells.append(fmt(match[0], args.metric) if match else "–")
                print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
