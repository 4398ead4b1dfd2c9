"""Markdown table of ``bench_real_shapes.py`` results (what the README shows).

Run: python benchmarks/real_shapes_table.py [benchmarks/results/bench_real_shapes.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "bench_real_shapes.json")
    data = json.loads(path.read_text())
    rows = data["results"]
    if not rows:
        raise SystemExit(f"{path} holds no results")
    t, t_long = rows[0]["tokens"], rows[0]["long_tokens"]
    print(f"| layer (random weights) | dtype | setup s | setup / RNG floor | setup / AIHWKit physics | "
          f"setup in fwd-eq ({t} / {t_long} tok) | analog / digital forward | held / digital | peak / digital |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        phys = f"{r['setup_over_physics']:.2f}x" if r.get("setup_over_physics") else "-"
        print(f"| {r['shape']} ({r['converted_weights'] / 1e6:.0f} M converted) | {r['dtype']} | {r['setup_s']:.0f} "
              f"| {r['setup_over_floor']:.1f}x | {phys} | {r['setup_forward_equivalents']:.0f} / "
              f"{r['setup_forward_equivalents_long']:.1f} | {r['forward_ratio']:.2f}x | {r['held_ratio']:.2f}x "
              f"| {r['peak_rss_ratio']:.2f}x |")
    m = data["machine"]
    print(f"\n{m['cpu_count']} CPU cores, torch {m['torch']}, {data['settings'].get('threads')} thread(s), "
          f"device `{rows[0]['device']}`, digital forward with transformers' fastest experts implementation here "
          f"({', '.join(sorted({r['digital_impl'] for r in rows}))}).")


if __name__ == "__main__":
    main()
