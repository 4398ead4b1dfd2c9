"""Hardware-aware training is a second ConversionContext over the adapters; one ExpertLayout writes experts back."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from tiny_models import FACTORIES, tiny_model
from torch import nn

import romer_aihwkit as ra
from romer_aihwkit.adapters import ExpertLayout
from romer_aihwkit.adapters.base import fused_expert_weights
from romer_aihwkit.analog import digital_state_dict
from romer_aihwkit.baselines.hwa import _attach_training_tiles, _digital_state, hwa_rpu_config


class _FusedExperts(nn.Module):
    """A transformers-5 fused experts module with every layout flag the decorator records."""

    def __init__(self, n: int, hidden: int, inter: int, has_gate: bool, transposed: bool, concatenated: bool,
                 has_bias: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        rows = 2 * inter if has_gate else inter
        first = torch.randn(n, rows, hidden, generator=g)
        down = torch.randn(n, hidden, inter, generator=g)
        name = "gate_up_proj" if has_gate else "up_proj"
        setattr(self, name, nn.Parameter(first.transpose(1, 2).contiguous() if transposed else first))
        self.down_proj = nn.Parameter(down.transpose(1, 2).contiguous() if transposed else down)
        if has_bias:
            setattr(self, f"{name}_bias", nn.Parameter(torch.randn(n, rows, generator=g)))
            self.down_proj_bias = nn.Parameter(torch.randn(n, hidden, generator=g))
        self.has_gate, self.is_transposed, self.is_concatenated, self.has_bias = has_gate, transposed, concatenated, has_bias
        self.act_fn = nn.SiLU()


@pytest.mark.parametrize("has_gate, transposed, concatenated, has_bias",
                         [c for c in itertools.product([True, False], repeat=4) if c[0] or c[2]])
def test_expert_layout_writes_every_fused_layout_back(has_gate, transposed, concatenated, has_bias):
    experts = _FusedExperts(3, 8, 4, has_gate, transposed, concatenated, has_bias)
    gate_up, down, b1, b2, gated = fused_expert_weights(experts)
    layout = ExpertLayout.of_fused(experts, gated, has_bias=b1 is not None)
    assert layout == ExpertLayout("fused", has_gate, transposed, concatenated, has_bias)
    back = layout.state_dict("e.", list(gate_up), list(down), torch.stack(b1) if b1 else None,
                             torch.stack(b2) if b2 else None)
    original = {f"e.{k}": v.detach() for k, v in experts.named_parameters()}
    assert set(back) == set(original)
    for key, value in back.items():
        assert torch.equal(value, original[key]), key
    if not concatenated:  # interleaved rows really are reordered on the way in
        assert not torch.equal(gate_up[:, 1], experts.gate_up_proj.detach()[:, 1] if not transposed
                               else experts.gate_up_proj.detach().transpose(1, 2)[:, 1])


def test_expert_layout_refuses_unknown_kinds_and_reads_old_dicts():
    from romer_aihwkit.adapters import UnsupportedLayoutError

    with pytest.raises(UnsupportedLayoutError, match="'stacked'"):
        ExpertLayout("stacked")
    assert ExpertLayout.coerce({"kind": "modulelist", "names": ["w1", "w3", "w2"]}) == \
        ExpertLayout("modulelist", names=("w1", "w3", "w2"))
    assert ExpertLayout.coerce(None, has_gate=False) == ExpertLayout(has_gate=False)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_training_tiles_are_the_matrices_the_analog_conversion_puts_on_tiles(family):
    from aihwkit.nn import AnalogLinear

    model = tiny_model(family)
    student = copy.deepcopy(model)
    plan = _attach_training_tiles(student, lambda: hwa_rpu_config("ideal", 0.0))
    tiles = sum(isinstance(m, AnalogLinear) for m in student.modules())
    summary = ra.analog_summary(ra.convert_to_analog_moe(copy.deepcopy(model), "pcm", progress=False))
    assert tiles == summary["router"] + summary["expert"] + summary["shared_expert"]
    state = _digital_state(plan)
    routers = [k for k in state if k.endswith(".gate.weight")]
    assert len(routers) == len([n for n, _ in plan if n.endswith(".gate")]) > 0  # every router trained and written back
    # converted and trained models write the experts back the same way (one ExpertLayout)
    digital = digital_state_dict(ra.convert_to_analog_moe(copy.deepcopy(model), "pcm", progress=False))
    for key, value in state.items():
        torch.testing.assert_close(value, digital[key].float(), atol=1e-6, rtol=1e-6)
