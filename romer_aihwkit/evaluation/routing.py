"""Routing statistics read from the routing trace: expert loads, balance, fidelity."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..analog.trace import RouterEvent, experts_of, find_routers, trace_routing
from ..calibration.base import run_batches
from ..measures import layer_metrics
from .perplexity import token_nll

__all__ = ["RoutingAccumulator", "routing_stats", "layer_metrics"]


class RoutingAccumulator:
    """Observer that accumulates, per MoE layer, noisy and reference selection counts and top-k overlap."""

    def __init__(self, routers: list, replicas: list[tuple[dict[int, int], str]] | None = None) -> None:
        self.routers = routers
        self.replicas = replicas or [({}, "average") for _ in routers]
        """Per layer: ``({hot: cold}, mode)`` of ROMER replicas, to count what each tile computes."""
        self._index = {id(r): i for i, r in enumerate(routers)}
        self.counts = [torch.zeros(r.num_experts, dtype=torch.float64) for r in routers]
        self.reference_counts = [torch.zeros(r.num_experts, dtype=torch.float64) for r in routers]
        self.overlap = [0.0 for _ in routers]
        self.tokens = [0 for _ in routers]

    def __call__(self, event: RouterEvent) -> None:
        i = self._index[id(event.router)]
        e = event.num_experts
        sel, ref = event.selected, event.reference_selected
        self.counts[i] += torch.bincount(sel.reshape(-1).cpu(), minlength=e).double()
        self.reference_counts[i] += torch.bincount(ref.reshape(-1).cpu(), minlength=e).double()
        k = sel.shape[1]
        self.overlap[i] += float((sel.unsqueeze(-1) == ref.unsqueeze(-2)).any(-1).sum()) / k
        self.tokens[i] += sel.shape[0]

    def result(self) -> dict[str, Any]:
        layers = []
        for i, router in enumerate(self.routers):
            metrics = layer_metrics(self.counts[i])
            total = float(self.counts[i].sum()) or 1.0
            ref_total = float(self.reference_counts[i].sum()) or 1.0
            tiles = self.counts[i].clone()
            pairs, mode = self.replicas[i]
            for hot, cold in pairs.items():
                moved = self.counts[i][hot] / 2 if mode == "split" else self.counts[i][hot]
                tiles[cold] += moved
                if mode == "split":
                    tiles[hot] -= moved
            layers.append(
                {
                    "layer": i,
                    "tile_load": (tiles / total).tolist(),
                    "tile_max_load_ratio": float(tiles.max() * len(tiles) / total),
                    "name": router.name,
                    "load": (self.counts[i] / total).tolist(),
                    "reference_load": (self.reference_counts[i] / ref_total).tolist(),
                    "router_fidelity": self.overlap[i] / max(self.tokens[i], 1),
                    "reference_load_cv": layer_metrics(self.reference_counts[i])["load_cv"],
                    **metrics,
                }
            )
        out: dict[str, Any] = {"tokens": max(self.tokens) if self.tokens else 0, "layers": layers}
        for key in ("load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity", "load_entropy",
                    "reference_load_cv"):
            values = [layer[key] for layer in layers]
            out[key] = sum(values) / len(values) if values else float("nan")
        return out


def _accumulator(model: nn.Module) -> RoutingAccumulator:
    routers = find_routers(model)
    replicas = []
    for router in routers:
        experts = experts_of(model, router)
        pairs = {h: c for h, c in enumerate(experts.replica_of.tolist()) if c >= 0}
        replicas.append((pairs, experts.replica_mode))
    return RoutingAccumulator(routers, replicas)


@torch.no_grad()
def routing_stats(model: nn.Module, batches, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Per-layer and averaged routing metrics of a converted model on ``batches``.

    Returns:
        ``{"layers": [...], "load_cv", "max_load_ratio", "router_fidelity", "load_entropy",
        "reference_load_cv", "tokens"}``. Per layer: ``load`` (share of top-k slots per expert
        under the noisy, calibrated routing), ``reference_load`` (digital routing on the same hidden
        states), ``load_cv`` = std/mean of loads, ``max_load_ratio`` = max load x E,
        ``tile_max_load_ratio`` = the same for what each *tile* computes (a ROMER replica tile takes
        half of its hot expert's tokens in ``split`` mode, all of them in ``average`` mode),
        ``router_fidelity`` = mean |top-k(noisy) ∩ top-k(reference)| / k, ``load_entropy``
        normalised to [0, 1]. Averages are over MoE layers.
    """

    acc = _accumulator(model)
    with trace_routing(model, acc):
        run_batches(model, batches, batch_size, progress, desc="routing stats")
    return acc.result()


@torch.no_grad()
def perplexity_and_routing(model: nn.Module, batches, batch_size: int = 8, progress: bool = True) -> tuple[float, dict[str, Any]]:
    """Perplexity and routing statistics from one pass over ``batches``."""

    acc = _accumulator(model)
    with trace_routing(model, acc):
        nll, count = token_nll(model, batches, batch_size=batch_size, progress=progress)
    return math.exp(nll / count), acc.result()
