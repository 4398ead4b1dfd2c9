"""PNG plots of a diagnosis (matplotlib): the per-layer heatmap and the error-budget bar chart."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .plots import _pyplot, _save

__all__ = ["LAYER_COLUMNS", "plot_diagnosis"]

LAYER_COLUMNS = ("router_weight_crest", "expert_weight_crest", "act_crest", "outlier_channels", "max_channel_ratio",
                 "router_logit_error", "router_error_per_token_share", "router_fidelity", "load_shift")
"""The per-layer columns of a diagnosis (report table and heatmap), in order."""


def plot_diagnosis(result: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """The per-layer heatmap and the budget bar chart (PNG)."""
    plt = _pyplot()
    s = result["settings"]
    title = f"{s.get('model', 'model')}, {s['device']}, t = {s['t_inference']:g} s, stress {s['stress']}"
    paths = []
    layers = result["layers"]
    data = torch.tensor([[float(x[c]) for c in LAYER_COLUMNS] for x in layers])
    span = (data.amax(0) - data.amin(0)).clamp_min(1e-12)
    norm = (data - data.amin(0)) / span
    fig, ax = plt.subplots(figsize=(1.3 * len(LAYER_COLUMNS) + 1.5, 0.5 * len(layers) + 1.8))
    ax.imshow(norm.numpy(), aspect="auto", cmap="viridis")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(LAYER_COLUMNS)))
    ax.set_xticklabels([c.replace("_", "\n") for c in LAYER_COLUMNS], fontsize=7)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([f"MoE layer {x['layer']}" for x in layers], fontsize=8)
    ax.set_title(f"Per-layer diagnosis (colour: per-column min-max) — {title}", fontsize=9)
    paths.append(_save(fig, out_dir / "layers_heatmap.png"))

    rows = [r for r in result["budget"] if r["kind"] in ("alone", "off")]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    labels = [f"{r['kind']}: {r['component'] if r['component'] != 'all' else r['nonideality']}" for r in rows]
    values = [r["delta_ppl"]["mean"] for r in rows]
    errs = [0.0 if r["delta_ppl"]["ci95"] != r["delta_ppl"]["ci95"] else r["delta_ppl"]["ci95"] for r in rows]
    ax.barh(range(len(rows)), values, xerr=errs, color=["#4c72b0" if r["kind"] == "alone" else "#dd8452" for r in rows])
    full = next(r for r in result["budget"] if r["kind"] == "full")["delta_ppl"]["mean"]
    ax.axvline(full, color="black", linestyle="--", linewidth=0.8, label="full analog")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ perplexity vs digital (mean ± 95 % CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"Error budget — {title}", fontsize=9)
    paths.append(_save(fig, out_dir / "budget.png"))
    return paths
