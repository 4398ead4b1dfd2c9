"""Memory of the analog simulation for full real checkpoints, from bytes per weight *measured* on
one real-shaped layer (``bench_real_shapes.py``), and which GPU each fits on. No download: the
architecture numbers are inline (from each checkpoint's public config.json).

Per converted weight (routers, routed and shared experts) the stacked engine holds the programmed
tile weight in the model's dtype plus per-tile column scales; the clean reference weights are
spilled to disk (CPU) or kept in CPU memory (GPU runs, ``reference="auto"``). The measured
``held_bytes / digital_bytes`` of one layer gives the bytes per converted weight; everything else
(attention, embeddings, dense MLPs) stays digital at the model's dtype.

    accelerator bytes ~= n_converted * measured_bytes_per_weight + n_other * dtype_bytes
                         (+ activations, + one matrix's transient programming state)

Run: python benchmarks/memory_estimate.py [--dtype bfloat16] [--results FILE.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Architecture numbers from the public config.json of each checkpoint.
CHECKPOINTS = {
    "allenai/OLMoE-1B-7B-0924": dict(vocab=50304, hidden=2048, layers=16, moe_layers=16, experts=64, expert_inter=1024,
                                     shared_inter=0, dense_inter=0, attn_params_per_layer=4 * 2048 * 2048, tied=False),
    "Qwen/Qwen1.5-MoE-A2.7B": dict(vocab=151936, hidden=2048, layers=24, moe_layers=24, experts=60, expert_inter=1408,
                                   shared_inter=5632, dense_inter=0, attn_params_per_layer=4 * 2048 * 2048 + 3 * 2048,
                                   tied=False, shared_gate=True),
    "deepseek-ai/deepseek-moe-16b-base": dict(vocab=102400, hidden=2048, layers=28, moe_layers=27, experts=64,
                                              expert_inter=1408, shared_inter=2 * 1408, dense_inter=10944,
                                              attn_params_per_layer=4 * 2048 * 2048, tied=False),
    "deepseek-ai/DeepSeek-V2-Lite": dict(vocab=102400, hidden=2048, layers=27, moe_layers=26, experts=64,
                                         expert_inter=1408, shared_inter=2 * 1408, dense_inter=10944,
                                         attn_params_per_layer=2048 * 16 * 192 + 2048 * 576 + 512 * 16 * 256 + 16 * 128 * 2048,
                                         tied=False),
    "mistralai/Mixtral-8x7B-v0.1": dict(vocab=32000, hidden=4096, layers=32, moe_layers=32, experts=8,
                                        expert_inter=14336, shared_inter=0, dense_inter=0,
                                        attn_params_per_layer=2 * 4096 * 4096 + 2 * 4096 * 1024, tied=False),
}
GPUS = {"24 GB (L4 / RTX 4090)": 24, "40 GB (A100-40G)": 40, "80 GB (A100 / H100)": 80, "141 GB (H200)": 141}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEADROOM = 1.15  # activations, allocator slack, one matrix's programming temporaries


def count(c: dict) -> dict[str, int]:
    h = c["hidden"]
    routed = c["moe_layers"] * c["experts"] * 3 * h * c["expert_inter"]
    shared = c["moe_layers"] * 3 * h * c["shared_inter"]
    router = c["moe_layers"] * c["experts"] * h
    dense = (c["layers"] - c["moe_layers"]) * 3 * h * c["dense_inter"]
    embed = c["vocab"] * h * (1 if c["tied"] else 2)
    attn = c["layers"] * c["attn_params_per_layer"]
    other = dense + embed + attn + (c["moe_layers"] * h if c.get("shared_gate") else 0)
    return {"converted": routed + shared + router, "other": other, "total": routed + shared + router + other}


def measured_bytes_per_weight(results: list[Path], dtype: str) -> tuple[float, str]:
    """Bytes held per converted weight, the largest over the measured shapes of ``dtype``."""
    rows = [r for path in results for r in json.loads(path.read_text())["results"]
            if r["dtype"] == dtype and r["engine"] == "stacked"]
    if not rows:
        raise SystemExit(f"no stacked-engine measurement for {dtype} in {', '.join(map(str, results))}: "
                         "run bench_real_shapes.py first")
    worst = max(rows, key=lambda r: r["held_ratio"])
    return worst["held_ratio"] * DTYPE_BYTES[dtype], worst["shape"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    ap.add_argument("--results", nargs="*", default=None,
                    help="bench_real_shapes result files (default: every results/bench_real_shapes*.json)")
    args = ap.parse_args()
    b = DTYPE_BYTES[args.dtype]
    files = [Path(p) for p in args.results] if args.results else sorted(
        (Path(__file__).resolve().parent / "results").glob("bench_real_shapes*.json"))
    per_weight, shape = measured_bytes_per_weight(files, args.dtype)
    print(f"{args.dtype}: {per_weight:.3f} B per converted weight (the largest over the measured layers: "
          f"{shape}; digital: {b} B)\n")
    print("| checkpoint | params | converted | digital model | analog simulation | ratio | fits on (with 15 % headroom) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, cfg in CHECKPOINTS.items():
        n = count(cfg)
        digital = n["total"] * b
        analog = n["converted"] * per_weight + n["other"] * b
        fits = [gpu for gpu, gib in GPUS.items() if analog * HEADROOM <= gib * 1e9]
        print(f"| `{name}` | {n['total'] / 1e9:.2f} B | {n['converted'] / 1e9:.2f} B | {digital / 2**30:.1f} GiB "
              f"| {analog / 2**30:.1f} GiB | {analog / digital:.2f}x | {fits[0] if fits else 'none single-GPU'} |")


if __name__ == "__main__":
    main()
