"""Typed reports: routing statistics and calibration callback reports.

``to_dict()`` gives exactly the dicts (and so the JSON bytes) these functions produced before they
were typed; indexing them like dicts still works but warns.
"""

from __future__ import annotations

import json

import pytest
import torch

from romer_aihwkit.evaluation import LayerRouting, RoutingAccumulator, RoutingStats


class _Router:
    def __init__(self, name, num_experts):
        self.name, self.num_experts = name, num_experts


class _Event:
    def __init__(self, router, selected, reference):
        self.router, self.num_experts = router, router.num_experts
        self.selected, self.reference_selected = selected, reference


def _stats() -> RoutingStats:
    r0, r1 = _Router("model.layers.0.mlp.gate", 4), _Router("model.layers.1.mlp.gate", 4)
    acc = RoutingAccumulator([r0, r1], [({0: 3}, "split"), ({}, "average")])
    acc(_Event(r0, torch.tensor([[0, 1], [0, 2], [0, 1]]), torch.tensor([[0, 1], [2, 3], [0, 1]])))
    acc(_Event(r1, torch.tensor([[0, 1], [0, 1]]), torch.tensor([[2, 3], [3, 2]])))
    return acc.result()


def test_routing_stats_to_dict_is_the_former_dict():
    stats = _stats()
    d = stats.to_dict()
    assert list(d) == ["tokens", "layers", "load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity",
                       "load_entropy", "reference_load_cv"]
    layer = d["layers"][0]
    assert list(layer) == ["layer", "tile_load", "tile_max_load_ratio", "name", "load", "reference_load",
                           "router_fidelity", "reference_load_cv", "load_cv", "max_load_ratio", "load_entropy"]
    assert all(type(layer[k]) is list for k in ("tile_load", "load", "reference_load"))
    # split replica: expert 0 (hot, 3 of 6 slots) shares its tokens with tile 3
    assert layer["load"] == pytest.approx([0.5, 2 / 6, 1 / 6, 0.0])
    assert layer["tile_load"] == pytest.approx([0.25, 2 / 6, 1 / 6, 0.25])
    assert layer["router_fidelity"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert d["tokens"] == 3
    assert d["router_fidelity"] == pytest.approx((stats.layers[0].router_fidelity + stats.layers[1].router_fidelity) / 2)
    assert d["load_cv"] == pytest.approx(sum(x.load_cv for x in stats.layers) / 2)


def test_routing_stats_round_trip_byte_identical():
    stats = _stats()
    text = json.dumps(stats.to_dict(), indent=2)
    again = RoutingStats.from_dict(json.loads(text))
    assert again == stats
    assert json.dumps(again.to_dict(), indent=2) == text


def test_routing_stats_without_layers_is_nan():
    empty = RoutingAccumulator([]).result()
    assert empty.tokens == 0 and empty.layers == ()
    assert all(v != v for k, v in empty.to_dict().items() if k not in ("tokens", "layers"))


def test_routing_stats_indexing_warns_and_returns_the_dict_entry():
    stats = _stats()
    with pytest.warns(DeprecationWarning, match=r"use stats\.router_fidelity"):
        assert stats["router_fidelity"] == stats.router_fidelity
    with pytest.warns(DeprecationWarning):
        layers = stats["layers"]
    assert layers == [layer.to_dict() for layer in stats.layers]
    with pytest.warns(DeprecationWarning, match=r"use layer\.load"):
        assert stats.layers[0]["load"] == list(stats.layers[0].load)
    assert isinstance(stats.layers[0], LayerRouting)
    with pytest.raises(KeyError):
        with pytest.warns(DeprecationWarning):
            stats["nope"]
