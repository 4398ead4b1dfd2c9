"""Sequential calibration: layer l's statistics are taken with the corrections of layers < l installed."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from romer_aihwkit.analog import convert_to_analog_moe, find_routers
from romer_aihwkit.calibration import CalibrationCallback, Romer, calibrate
from romer_aihwkit.calibration.base import merge_reports


def _programmed(family="olmoe", device="gaussian-10"):
    model = convert_to_analog_moe(tiny_model(family), device)
    model.program_analog_weights(seed=0, t_inference=3600.0)
    return model


@pytest.fixture
def blocks():
    return torch.randint(3, 96, (6, 24), generator=torch.Generator().manual_seed(3))


class Recorder(CalibrationCallback):
    """Records what it saw; installs a logit bias that sends every token of its layers to expert 0."""

    name = "recorder"

    def __init__(self):
        self.starts = []
        self.events = []

    def start(self, model, routers):
        self.routers = routers
        self.starts.append(([r.layer_index for r in routers],
                            {r.layer_index: r.is_calibrated() for r in find_routers(model)}))

    def observe(self, event):
        self.events.append((event.layer, event.hidden.double().sum().item()))

    def finish(self, model):
        for r in self.routers:
            r.logit_bias[0] = 100.0
        return {"layers": [{"layer": r.layer_index} for r in self.routers], "count": len(self.routers),
                "mean": float(self.routers[0].layer_index), "setting": "x"}


def test_sequential_sees_earlier_corrections(blocks):
    one_pass, seq = Recorder(), Recorder()
    calibrate(_programmed(), blocks, [one_pass], batch_size=3, progress=False)
    report = calibrate(_programmed(), blocks, [seq], batch_size=3, progress=False, sequential=True)
    # one pass: one start with both routers, nothing calibrated yet
    assert one_pass.starts == [([0, 1], {0: False, 1: False})]
    # sequential: one start per layer, layer 0 already corrected when layer 1 starts
    assert seq.starts == [([0], {0: False, 1: False}), ([1], {0: True, 1: False})]
    # each pass stops after its own router: only that layer's events, 2 batches each
    assert [layer for layer, _ in seq.events] == [0, 0, 1, 1]
    # layer 0 saw the same hidden states; layer 1 saw the ones produced by the corrected layer 0
    first = [h for layer, h in one_pass.events if layer == 0]
    assert [h for layer, h in seq.events if layer == 0] == pytest.approx(first)
    second = [h for layer, h in one_pass.events if layer == 1]
    assert [h for layer, h in seq.events if layer == 1] != pytest.approx(second)
    merged = report["recorder"]
    assert merged == {"layers": [{"layer": 0}, {"layer": 1}], "count": 2, "mean": 0.5, "setting": "x",
                      "sequential": True}


def test_sequential_romer_keeps_earlier_layers_replacements(blocks):
    model = _programmed()
    report = calibrate(model, blocks, [Romer(tau=0.9)], batch_size=3, progress=False, sequential=True)["romer"]
    assert report.sequential and [layer.layer for layer in report.layers] == [0, 1]
    assert report.replaced_experts == sum(len(layer.replaced) for layer in report.layers) > 0
    assert report.settings["tau"] == 0.9 and report.settings["percentiles"] == [5.0, 50.0, 95.0]
    for router, layer in zip(find_routers(model), report.layers):
        # every layer keeps its own corrections after the later layers were calibrated
        assert sorted(router.expert_mask.nonzero().flatten().tolist()) == sorted(p.cold for p in layer.replaced)
        torch.testing.assert_close(router.logit_scale.cpu(), torch.tensor(layer.scale))
    assert set(report.summary) == {"load_cv", "max_load_ratio", "router_fidelity"}


def test_one_pass_and_sequential_agree_on_the_first_layer(blocks):
    one = calibrate(_programmed(), blocks, [Romer()], batch_size=3, progress=False)["romer"]
    seq = calibrate(_programmed(), blocks, [Romer()], batch_size=3, progress=False, sequential=True)["romer"]
    assert seq.layers[0].scale == pytest.approx(one.layers[0].scale)
    assert seq.layers[0].replaced == one.layers[0].replaced


def test_romer_seq_method_is_registered(blocks):
    from romer_aihwkit.experiments import apply_method, get_method, prepare_model

    method = get_method("romer-seq")
    assert method.sequential_calibration and method.needs_calibration_data
    model = prepare_model(tiny_model("olmoe"), "gaussian-10", method)
    report = apply_method(model, method, seed=0, t_inference=3600.0, calib_batches=blocks, batch_size=3)
    assert report["callbacks"]["romer"]["sequential"] is True


def test_merge_reports_rules():
    merged = merge_reports([{"a": 1, "b": 0.5, "c": [1], "d": {"x": 2.0}, "e": "s", "f": True, "g": 1,
                             "settings": {"tau": 0.25}, "selection": {"tau": 0.1}},
                            {"a": 2, "b": 1.5, "c": [2], "d": {"x": 4.0}, "e": "s", "f": False, "g": 1,
                             "settings": {"tau": 0.25}, "selection": {"tau": 0.5}}])
    assert merged == {"a": 3, "b": 1.0, "c": [1, 2], "d": {"x": 3.0}, "e": "s", "f": [True, False], "g": 2,
                      "settings": {"tau": 0.25}, "selection": [{"tau": 0.1}, {"tau": 0.5}]}
    assert merge_reports([]) == {}


def test_sequential_romer_auto_selects_per_layer(blocks):
    from romer_aihwkit.calibration import RomerAuto

    cb = RomerAuto(percentile_candidates=((5, 50, 95),), tau_candidates=(0.0, 0.9))
    report = calibrate(_programmed(), blocks, [cb], batch_size=2, progress=False, sequential=True)["romer-auto"]
    assert len(report.selection) == 2 and all(s["tau"] in (0.0, 0.9) for s in report.selection)
