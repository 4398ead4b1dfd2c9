"""ROMER's replacement guard: a cold expert with an outlier output (a "super expert") is never replaced."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from romer_aihwkit.analog import convert_to_analog_moe, find_routers
from romer_aihwkit.calibration import Romer, calibrate


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(3, 96, (6, 24), generator=torch.Generator().manual_seed(11))


def _calibrated(blocks, super_expert=None, **kwargs):
    model = tiny_model("olmoe")
    if super_expert is not None:
        layer, expert = super_expert
        with torch.no_grad():  # one expert writes a massive activation, as super experts do
            model.model.layers[layer].mlp.experts.down_proj[expert] *= 300.0
    model = convert_to_analog_moe(model, "gaussian-10")
    model.program_analog_weights(seed=0, t_inference=3600.0)
    report = calibrate(model, blocks, [Romer(tau=0.9, **kwargs)], batch_size=3, progress=False)["romer"]
    return model, report


def test_cold_super_expert_is_never_replaced(blocks):
    _, plain = _calibrated(blocks)
    assert plain.super_experts == ()  # no false alarm on a Gaussian model
    cold = plain.layers[0].replaced[0].cold  # replaced without the outlier: it is cold
    model, guarded = _calibrated(blocks, super_expert=(0, cold))
    layer = guarded.layers[0]
    assert [s["expert"] for s in layer.super_experts] == [cold]
    assert layer.super_experts[0]["ratio_to_median"] > 10.0
    assert guarded.super_experts == ({"layer": 0, **layer.super_experts[0]},)
    assert cold not in [p.cold for p in layer.replaced]
    assert not bool(find_routers(model)[0].expert_mask[cold])
    assert len(layer.expert_max_output) == 8
    # the guard is what protects it: turned off, the same cold expert is replaced
    _, unguarded = _calibrated(blocks, super_expert=(0, cold), super_expert_ratio=None)
    assert cold in [p.cold for p in unguarded.layers[0].replaced]
    assert unguarded.super_experts == ()


def test_guard_options_are_validated():
    with pytest.raises(ValueError, match="super_expert_ratio"):
        Romer(super_expert_ratio=0.5)
    with pytest.raises(ValueError, match="guard_tokens"):
        Romer(guard_tokens=0)
