"""Memory estimate of the analog simulation for the real checkpoints (no download: configs inline).

Per converted weight (router, routed and shared experts) the simulation holds the digital
reference in the model's dtype plus the programmed/drifted tile weight in fp32 (AIHWKit's torch
tiles compute in fp32); AIHWKit's programming state is released after drift (see
`romer_aihwkit.analog.matrix.set_keep_programming_state`). Everything else stays digital.

    bytes ~= n_converted * (dtype_bytes + 4) + n_other * dtype_bytes  (+ activations, + one matrix's
             transient programming state)

Run: python benchmarks/memory_estimate.py [--dtype-bytes 2]
"""

from __future__ import annotations

import argparse

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
}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype-bytes", type=int, default=2, help="bytes per digital weight (2: bf16/fp16, 4: fp32)")
    args = ap.parse_args()
    b = args.dtype_bytes
    print("| checkpoint | params | converted to analog | digital model | analog simulation | ratio |")
    print("|---|---|---|---|---|---|")
    for name, cfg in CHECKPOINTS.items():
        n = count(cfg)
        digital = n["total"] * b
        analog = n["converted"] * (b + 4) + n["other"] * b
        print(f"| `{name}` | {n['total'] / 1e9:.2f} B | {n['converted'] / 1e9:.2f} B | {digital / 2**30:.1f} GiB "
              f"| {analog / 2**30:.1f} GiB | {analog / digital:.2f}x |")


if __name__ == "__main__":
    main()
