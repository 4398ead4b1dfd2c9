"""Baselines: hetero selection rule, method registry, static input ranges, digital router."""

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogExperts, find_routers
from romer_aihwkit.baselines import max_neuron_norms, select_hetero_experts
from romer_aihwkit.experiments import apply_method, get_method, list_methods, prepare_model


def test_max_neuron_norm_is_the_largest_norm_over_neurons():
    # expert 0: neuron 1 has gate row [3, 0], up row [0, 4], down column [0, 0] -> norm 5
    gate_up = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    down = torch.zeros(2, 2)
    # expert 1: every neuron has norm sqrt(2)
    gate_up1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    scores = max_neuron_norms([gate_up, gate_up1], [down, torch.zeros(2, 2)])
    assert torch.allclose(scores, torch.tensor([5.0, 2**0.5]))


def test_hetero_selects_experts_with_largest_max_neuron_norm():
    model = tiny_model("olmoe")
    with torch.no_grad():
        model.model.layers[0].mlp.experts.down_proj[5, :, 3] = 50.0  # one huge neuron in expert 5
        model.model.layers[1].mlp.experts.gate_up_proj[2, 7, :] = 40.0
    selection = select_hetero_experts(model, fraction=0.125)
    assert selection == {0: [5], 1: [2]}
    assert len(select_hetero_experts(model, fraction=0.25)[0]) == 2
    converted = prepare_model(model, "pcm", "hetero")
    experts = [m for m in converted.modules() if isinstance(m, AnalogExperts)]
    assert not experts[0].analog_mask()[5] and experts[0].analog_mask()[4]
    assert ra.analog_summary(converted)["expert"] == 2 * 8 * 2 - 4


def test_method_registry_and_errors():
    assert {"none", "global", "per-column", "input-range", "digital-router", "hetero", "romer", "romer-norm",
            "romer-replace", "romer+hetero"} <= set(list_methods())
    with pytest.raises(ValueError, match="valid methods"):
        get_method("magic")


def test_digital_router_method_has_perfect_fidelity():
    from romer_aihwkit.evaluation import routing_stats

    model = prepare_model(tiny_model("olmoe"), "pcm", "digital-router")
    apply_method(model, "digital-router", seed=0, t_inference=3600.0)
    tokens = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0))
    stats = routing_stats(model, tokens, progress=False)
    assert stats.router_fidelity == 1.0
    assert all(not r.matrix.is_analog for r in find_routers(model))


def test_user_method_with_static_input_ranges_does_not_share_a_stacked_conversion():
    """What picks the engine is part of the conversion key: a registered method with static input
    ranges and no device overrides must not reuse (say) ``romer``'s stacked model and calibrate nothing."""
    import warnings

    from romer_aihwkit.experiments.methods import METHODS, Method, register_method

    mine = register_method(Method("test-my-ranges", "static input ranges, no overrides", static_input_ranges=True))
    try:
        plain = get_method("romer")
        assert mine.device_overrides == plain.device_overrides and mine.analog_router == plain.analog_router
        assert mine.conversion_key() != plain.conversion_key()
        assert mine.engine == "aihwkit" and plain.engine == "stacked"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the announced fallback to the AIHWKit engine
            model = prepare_model(tiny_model("olmoe"), "pcm", "test-my-ranges")
        assert model.analog_state.engine == mine.engine
        calib = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(1))
        assert apply_method(model, mine, seed=0, t_inference=3600.0, calib_batches=calib)["input_range_tiles"] > 0
    finally:
        METHODS.pop("test-my-ranges")


def test_static_input_ranges_are_set_from_data():
    model = prepare_model(tiny_model("olmoe"), "pcm", "input-range")
    calib = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    report = apply_method(model, "input-range", seed=0, t_inference=3600.0, calib_batches=calib)
    assert report["input_range_tiles"] > 0
    tiles = [t for r in find_routers(model) for t in r.matrix.analog.analog_tiles()]
    assert all(t.input_range is not None and float(t.input_range) > 0 for t in tiles)


def test_methods_need_calibration_data_when_they_calibrate():
    model = prepare_model(tiny_model("olmoe"), "pcm", "romer")
    with pytest.raises(ValueError, match="calibration data"):
        apply_method(model, "romer", seed=0, t_inference=3600.0)


@pytest.mark.parametrize("method", ["clip", "remap-layer", "per-column", "romer-split"])
def test_every_method_runs_on_a_chip_instance(method):
    from romer_aihwkit.evaluation import perplexity_and_routing

    model = prepare_model(tiny_model("olmoe"), "pcm", method)
    calib = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    apply_method(model, method, seed=0, t_inference=3600.0, calib_batches=calib)
    ppl, stats = perplexity_and_routing(model, calib, progress=False)
    assert ppl == ppl and ppl < 1e4 and 0.0 < stats.router_fidelity <= 1.0


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
def test_clip_method_clips_weights_before_programming(engine):
    from romer_aihwkit.analog import AnalogExperts
    from romer_aihwkit.devices import load_device_config

    config = load_device_config("ideal").replace(**get_method("clip").device_overrides)
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), config, engine=engine)
    model.program_analog_weights(seed=0)
    bank = next(m for m in model.modules() if isinstance(m, AnalogExperts)).gate_up
    if engine == "stacked":
        programmed = bank.tiles[0].float()
    else:
        programmed = next(iter(bank[0].analog.analog_tiles())).tile.weight.detach()
    reference = bank.reference(0).float()
    # ideal device (no programming noise, no remapping): the tile holds AIHWKit's 2.5-sigma clip
    alpha = reference.std() * 2.5
    assert (reference.abs() > alpha).any()
    assert torch.allclose(programmed, reference.clamp(-alpha, alpha), atol=1e-7)
