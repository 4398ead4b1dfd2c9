"""Router ensemble: N programmed router tiles, logits averaged."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from romer_aihwkit.analog import analog_summary, convert_to_analog_moe, find_routers, trace_routing
from romer_aihwkit.baselines.router_ensemble import EnsembleMatrix, install_router_ensemble, router_tiles
from romer_aihwkit.experiments import apply_method, get_method, prepare_model


def _router_error(model, ids) -> float:
    errs = []

    def obs(event):
        ref = event.reference_logits
        errs.append(float((event.noisy_logits - ref).pow(2).sum() / ref.pow(2).sum()))

    with trace_routing(model, obs), torch.no_grad():
        model(input_ids=ids, use_cache=False)
    return sum(errs) / len(errs)


def test_copies_have_independent_noise_and_average_it_down():
    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    plain = convert_to_analog_moe(tiny_model("olmoe"), "gaussian-10")
    ens = convert_to_analog_moe(tiny_model("olmoe"), "gaussian-10")
    assert install_router_ensemble(ens, copies=4) == 2
    plain.program_analog_weights(seed=3, t_inference=3600.0)
    ens.program_analog_weights(seed=3, t_inference=3600.0)
    router = find_routers(ens)[0]
    assert isinstance(router.matrix, EnsembleMatrix) and len(router.matrix.members) == 4
    x = torch.randn(5, router.hidden_dim)
    outs = [m.forward_fp32(x) for m in router.matrix.members]
    # copy 0 is the plain model's tile on the same chip instance; the others differ from it
    torch.testing.assert_close(outs[0], find_routers(plain)[0].matrix.forward_fp32(x))
    assert all(not torch.allclose(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(router.matrix.forward_fp32(x), torch.stack(outs).mean(0))
    torch.testing.assert_close(router.weight, find_routers(plain)[0].weight)
    # independent programming noise: the mean squared logit error shrinks (about 4x for 4 copies)
    assert _router_error(ens, ids) < 0.5 * _router_error(plain, ids)


def test_tile_cost_and_summary():
    model = convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    assert router_tiles(model) == {"routers": 2, "router_matrices": 2, "router_tiles": 2}
    install_router_ensemble(model, copies=3)
    assert router_tiles(model) == {"routers": 2, "router_matrices": 6, "router_tiles": 6}
    assert analog_summary(model)["router"] == 6


def test_method_runs_and_refuses_digital_routers():
    method = get_method("router-ensemble")
    assert method.router_copies == 4 and method.conversion_key() != get_method("global").conversion_key()
    model = prepare_model(tiny_model("qwen2_moe"), "pcm", method)
    apply_method(model, method, seed=0, t_inference=3600.0)
    assert router_tiles(model)["router_matrices"] == 8
    with pytest.raises(ValueError, match="no analog router"):
        install_router_ensemble(convert_to_analog_moe(tiny_model("olmoe"), "pcm", analog_router=False))
    with pytest.raises(ValueError, match="copies >= 2"):
        install_router_ensemble(convert_to_analog_moe(tiny_model("olmoe"), "pcm"), copies=1)
