"""Markdown table of ``bench_real_shapes.py`` results (what the README shows).

Run: python benchmarks/real_shapes_table.py [RESULTS.json ...]   (default: benchmarks/results/bench_real_shapes.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent / "results"
    paths = [Path(p) for p in sys.argv[1:]] or [here / "bench_real_shapes.json"]
    runs = [(p, json.loads(p.read_text())) for p in paths]
    rows = [r for _, data in runs for r in data["results"]]
    if not rows:
        raise SystemExit(f"{', '.join(map(str, paths))} hold no results")
    t = rows[0]["tokens"]
    # runs before the exact-physics floor measured a 3-draw RNG floor (no "floor_ops" field)
    exact = all("floor_ops" in r for r in rows)
    floor = "exact-physics floor" if exact else "RNG floor"
    extra = " program+drift / floor | two-call / one-call |" if exact else ""
    print(f"| layer (random weights) | dtype | setup s | setup / {floor} |{extra} setup / AIHWKit physics | "
          f"setup in fwd-eq ({t} tok / long) | analog / digital forward | held / digital | peak / digital |")
    print("|---|---|---:|---:|" + ("---:|---:|" if exact else "") + "---:|---:|---:|---:|---:|")
    for r in rows:
        phys = f"{r['setup_over_physics']:.2f}x" if r.get("setup_over_physics") else "-"
        cells = (f" {r['program_drift_over_floor']:.2f}x | {r['two_call_over_one_call']:.2f}x |" if exact else "")
        print(f"| {r['shape']} ({r['converted_weights'] / 1e6:.0f} M converted) | {r['dtype']} | {r['setup_s']:.0f} "
              f"| {r['setup_over_floor']:.1f}x |{cells} {phys} | {r['setup_forward_equivalents']:.0f} / "
              f"{r['setup_forward_equivalents_long']:.1f} ({r['long_tokens']}) | {r['forward_ratio']:.2f}x "
              f"| {r['held_ratio']:.2f}x | {r['peak_rss_ratio']:.2f}x |")
    for path, data in runs:
        m = data["machine"]
        impls = sorted({r["digital_impl"] for r in data["results"]})
        print(f"\n`{path.name}`: {m['cpu_count']} CPU cores, torch {m['torch']}, {data['settings'].get('threads')} "
              f"thread(s), device `{data['results'][0]['device'] if data['results'] else '-'}`, digital forward with "
              f"transformers' fastest experts implementation measured here ({', '.join(impls)}); floor: "
              f"{data['results'][0].get('floor_ops', '3 normal draws per converted weight') if data['results'] else '-'}.")


if __name__ == "__main__":
    main()
