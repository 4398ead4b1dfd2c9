"""Routing statistics read from the routing trace: expert loads, balance, fidelity."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..analog.trace import RouterEvent, experts_of, find_routers, trace_routing
from ..calibration.base import run_batches
from ..deprecation import deprecated_item
from ..measures import layer_metrics
from .perplexity import token_nll

__all__ = ["LayerRouting", "RoutingAccumulator", "RoutingStats", "routing_stats", "perplexity_and_routing",
           "layer_metrics"]

_AVERAGED = ("load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity", "load_entropy",
             "reference_load_cv")
"""The per-layer metrics :class:`RoutingStats` averages over MoE layers, in its ``to_dict()`` order."""


@dataclass(frozen=True)
class LayerRouting:
    """Routing statistics of one MoE layer (see :func:`routing_stats`)."""

    layer: int
    name: str
    load: tuple[float, ...]
    """Share of top-k slots per expert under the noisy, calibrated routing."""
    reference_load: tuple[float, ...]
    """The same under digital routing on the same hidden states."""
    tile_load: tuple[float, ...]
    """Share of the slots each *tile* computes (ROMER replica tiles take their hot expert's tokens)."""
    tile_max_load_ratio: float
    router_fidelity: float
    reference_load_cv: float
    load_cv: float
    max_load_ratio: float
    load_entropy: float

    def to_dict(self) -> dict[str, Any]:
        """The layer's dict as :func:`routing_stats` returned it before it was typed (same keys and order)."""
        return {"layer": self.layer, "tile_load": list(self.tile_load), "tile_max_load_ratio": self.tile_max_load_ratio,
                "name": self.name, "load": list(self.load), "reference_load": list(self.reference_load),
                "router_fidelity": self.router_fidelity, "reference_load_cv": self.reference_load_cv,
                "load_cv": self.load_cv, "max_load_ratio": self.max_load_ratio, "load_entropy": self.load_entropy}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerRouting:
        return cls(int(data["layer"]), str(data["name"]), tuple(data["load"]), tuple(data["reference_load"]),
                   tuple(data["tile_load"]), data["tile_max_load_ratio"], data["router_fidelity"],
                   data["reference_load_cv"], data["load_cv"], data["max_load_ratio"], data["load_entropy"])

    def __getitem__(self, key: str) -> Any:
        """``layer["load"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "layer", key, "routing_stats' layers are LayerRouting records",
                               "the layer's dict")


@dataclass(frozen=True)
class RoutingStats:
    """Routing statistics of a converted model on a set of batches (see :func:`routing_stats`).

    The model-level metrics are the means of the per-layer ones over MoE layers (NaN without layers).
    """

    tokens: int
    layers: tuple[LayerRouting, ...]
    load_cv: float
    max_load_ratio: float
    tile_max_load_ratio: float
    router_fidelity: float
    load_entropy: float
    reference_load_cv: float

    @classmethod
    def of_layers(cls, tokens: int, layers: tuple[LayerRouting, ...]) -> RoutingStats:
        """The statistics of ``layers``, averaged over them."""
        means = {key: sum(getattr(layer, key) for layer in layers) / len(layers) if layers else float("nan")
                 for key in _AVERAGED}
        return cls(tokens, layers, **means)

    def to_dict(self) -> dict[str, Any]:
        """The dict :func:`routing_stats` returned before it was typed (same keys, order and values)."""
        return {"tokens": self.tokens, "layers": [layer.to_dict() for layer in self.layers],
                **{key: getattr(self, key) for key in _AVERAGED}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingStats:
        return cls(int(data["tokens"]), tuple(LayerRouting.from_dict(layer) for layer in data["layers"]),
                   **{key: data[key] for key in _AVERAGED})

    def __getitem__(self, key: str) -> Any:
        """``stats["router_fidelity"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "stats", key, "routing_stats returns RoutingStats", "the former dict")


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

    def result(self) -> RoutingStats:
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
            layers.append(LayerRouting(
                layer=i, name=router.name, load=tuple((self.counts[i] / total).tolist()),
                reference_load=tuple((self.reference_counts[i] / ref_total).tolist()),
                tile_load=tuple((tiles / total).tolist()),
                tile_max_load_ratio=float(tiles.max() * len(tiles) / total),
                router_fidelity=self.overlap[i] / max(self.tokens[i], 1),
                reference_load_cv=layer_metrics(self.reference_counts[i])["load_cv"],
                load_cv=metrics["load_cv"], max_load_ratio=metrics["max_load_ratio"],
                load_entropy=metrics["load_entropy"]))
        return RoutingStats.of_layers(max(self.tokens) if self.tokens else 0, tuple(layers))


def _accumulator(model: nn.Module) -> RoutingAccumulator:
    routers = find_routers(model)
    replicas = []
    for router in routers:
        experts = experts_of(model, router)
        pairs = {h: c for h, c in enumerate(experts.replica_of.tolist()) if c >= 0}
        replicas.append((pairs, experts.replica_mode))
    return RoutingAccumulator(routers, replicas)


@torch.no_grad()
def routing_stats(model: nn.Module, batches, batch_size: int = 8, progress: bool = True) -> RoutingStats:
    """Per-layer and averaged routing metrics of a converted model on ``batches``.

    Returns:
        A :class:`RoutingStats` (``layers``, ``load_cv``, ``max_load_ratio``, ``tile_max_load_ratio``,
        ``router_fidelity``, ``load_entropy``, ``reference_load_cv``, ``tokens``;
        ``to_dict()`` is the former dict). Per layer (:class:`LayerRouting`): ``load`` (share of top-k slots per expert
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
def perplexity_and_routing(model: nn.Module, batches, batch_size: int = 8, progress: bool = True) -> tuple[float, RoutingStats]:
    """Perplexity and routing statistics from one pass over ``batches``."""

    acc = _accumulator(model)
    with trace_routing(model, acc):
        nll, count = token_nll(model, batches, batch_size=batch_size, progress=progress)
    return math.exp(nll / count), acc.result()
