"""Typed reports: routing statistics and calibration callback reports.

``to_dict()`` gives exactly the dicts (and so the JSON bytes) these functions produced before they
were typed; indexing them like dicts still works but warns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from routing_fakes import FakeEvent, FakeRouter
from tiny_models import tiny_model

from romer_aihwkit.analog import convert_to_analog_moe
from romer_aihwkit.calibration import (
    CalibrationCallback,
    CalibrationReport,
    CallbackReport,
    Romer,
    RomerLayer,
    RomerReport,
    RouterAlignLayer,
    RouterAlignReport,
    calibrate,
)
from romer_aihwkit.evaluation import LayerRouting, RoutingAccumulator, RoutingStats


def _stats() -> RoutingStats:
    r0, r1 = FakeRouter("model.layers.0.mlp.gate", 4), FakeRouter("model.layers.1.mlp.gate", 4)
    acc = RoutingAccumulator([r0, r1], [({0: 3}, "split"), ({}, "average")])
    acc(FakeEvent(r0, torch.tensor([[0, 1], [0, 2], [0, 1]]), torch.tensor([[0, 1], [2, 3], [0, 1]])))
    acc(FakeEvent(r1, torch.tensor([[0, 1], [0, 1]]), torch.tensor([[2, 3], [3, 2]])))
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


# --------------------------------------------------------------------------- calibration callback reports
REPORTS = Path(__file__).parent / "data" / "calibration_reports.json"
"""``CalibrationReport.to_dict()`` of calibrations written before the callback reports were typed (tiny
OLMoE/Qwen2-MoE models on gaussian-10): ROMER (one pass, sequential, split), RomerAuto (one pass,
sequential), router-align (one pass, sequential), two ROMERs, and a user callback returning a dict."""


def _dumps(data) -> str:
    return json.dumps(data, indent=2, default=str)  # the settings the calibrate command writes report.json with


@pytest.mark.parametrize("kind", sorted(json.loads(REPORTS.read_text())))
def test_calibration_report_round_trip_is_byte_identical(kind):
    data = json.loads(REPORTS.read_text())[kind]
    report = CalibrationReport.from_dict(data)
    assert _dumps(report.to_dict()) == _dumps(data)
    for name, cb in report.callbacks.items():
        base = name.split("#")[0]
        if base.startswith("romer"):
            assert isinstance(cb, RomerReport) and all(isinstance(layer, RomerLayer) for layer in cb.layers)
            assert RomerReport.from_dict(cb.to_dict()) == cb
        elif base == "router-align":
            assert isinstance(cb, RouterAlignReport) and all(isinstance(layer, RouterAlignLayer) for layer in cb.layers)
        else:  # a user callback's dict stays a dict
            assert type(cb) is dict and cb == data["callbacks"][name]
        assert isinstance(cb, (dict, CallbackReport))


def test_whole_file_round_trip_is_byte_identical():
    text = REPORTS.read_text()
    again = {kind: CalibrationReport.from_dict(d).to_dict() for kind, d in json.loads(text).items()}
    assert _dumps(again) == text


def test_replaced_experts_and_masked_share_read_the_typed_fields():
    data = json.loads(REPORTS.read_text())
    report = CalibrationReport.from_dict(data["two_romers"])
    romer, norm = report["romer"], report["romer-norm"]
    assert romer.replaced_experts == sum(len(layer.replaced) for layer in romer.layers) == 2
    assert norm.replaced_experts == 0
    assert report.replaced_experts == 2 + 3  # + the user callback's dict ("replaced_experts": 3)
    # per layer, the largest share any callback masked; the user callback's dict counts too
    assert report.masked_share == [max(0.25, romer.layers[0].masked_share), max(0.0, romer.layers[1].masked_share)]
    assert CalibrationReport.from_dict(data["romer_split_qwen2moe"]).masked_share == [0.0, 0.0]
    assert CalibrationReport.from_dict({}).masked_share is None


def test_a_report_without_the_typed_keys_stays_a_dict():
    # a user callback that happens to be called "romer" but reports something else
    report = CalibrationReport.from_dict({"tokens": 4, "callbacks": {"romer": {"note": 1}}})
    assert report["romer"] == {"note": 1}
    assert report.replaced_experts == 0 and report.masked_share is None


def test_older_keys_absent_stay_absent_and_unknown_keys_are_kept():
    data = json.loads(REPORTS.read_text())["romer"]["callbacks"]["romer"]
    old = {k: v for k, v in data.items() if k not in ("masked_share", "super_experts")}
    old["layers"] = [{k: v for k, v in layer.items() if k not in ("masked_share", "expert_max_output",
                                                                  "super_experts")} | {"later": 1}
                     for layer in old["layers"]]
    old["future"] = {"x": 1}
    typed = RomerReport.from_dict(old)
    assert typed.masked_share is None and typed.layers[0].masked_share is None
    assert typed.layers[0].extra == {"later": 1} and typed.extra == {"future": {"x": 1}}
    assert _dumps(typed.to_dict()) == _dumps(old)
    assert CalibrationReport(1, {"romer": typed}).masked_share is None


def test_callback_report_indexing_warns():
    report = CalibrationReport.from_dict(json.loads(REPORTS.read_text())["romer"])
    romer = report["romer"]
    with pytest.warns(DeprecationWarning, match=r"use romer\.summary"):
        assert report["romer"]["summary"] == romer.to_dict()["summary"]
    with pytest.warns(DeprecationWarning, match=r"use layer\.replaced"):
        assert romer.layers[0]["replaced"] == [{"cold": p.cold, "hot": p.hot} for p in romer.layers[0].replaced]
    align = CalibrationReport.from_dict(json.loads(REPORTS.read_text())["romer_split_qwen2moe"])["router-align"]
    with pytest.warns(DeprecationWarning, match=r"use router_align\.digital_parameters"):
        assert align["digital_parameters"] == align.digital_parameters


def test_calibrate_returns_typed_reports_and_keeps_user_dicts():
    class Custom(CalibrationCallback):
        name = "custom"

        def finish(self, model):
            return {"layers": [{"masked_share": 0.5}, {"masked_share": 0.0}], "replaced_experts": 1}

    model = convert_to_analog_moe(tiny_model("olmoe"), "gaussian-10")
    model.program_analog_weights(seed=0, t_inference=3600.0)
    blocks = torch.randint(3, 96, (6, 24), generator=torch.Generator().manual_seed(3))
    for sequential in (False, True):
        report = calibrate(model, blocks, [Romer(tau=0.9), Custom()], batch_size=3, progress=False,
                           sequential=sequential)
        assert isinstance(report["romer"], RomerReport) and type(report["custom"]) is dict
        assert report["romer"].sequential is (True if sequential else None)
        assert report.replaced_experts == report["romer"].replaced_experts + (2 if sequential else 1)
        back = CalibrationReport.from_dict(json.loads(_dumps(report.to_dict())))
        assert _dumps(back.to_dict()) == _dumps(report.to_dict())
