"""One chip identity: the same seed programs the same chip in the stacked and the AIHWKit engine.

Both engines call the shared per-tile physics (:mod:`romer_aihwkit.analog.physics`); these tests
check the result *exactly* on every preset, on matrices of several tiles: tile weights bit for bit,
mapping scales times drift-compensation alphas bit for bit (the stacked engine holds their product,
computed with the same float operation), and the forward equal up to float summation order.
"""

import warnings

import pytest
import torch
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog.matrix import AnalogMatrix
from romer_aihwkit.analog.reference import ReferenceStore
from romer_aihwkit.analog.stacked import AnalogStack
from romer_aihwkit.devices.mapping import cxx_tiles_available

SHAPE = (48, 40)  # on 16 x 16 tiles: 3 output x 3 input tiles
TILES = dict(max_input_size=16, max_output_size=16)
PRESETS = ra.list_device_configs()


def _aihwkit_chip(matrix: AnalogMatrix) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tile weights [out, in], mapping x alpha [S_in, out])`` read from AIHWKit's own tile objects."""
    out_f, in_f = matrix.weight.shape
    weights = torch.zeros(out_f, in_f)
    scales = []
    module = matrix.analog.analog_module
    rows = [list(r) for r in module.array] if hasattr(module, "array") else [[module]]
    i0 = 0
    for row in rows:
        o0, col = 0, []
        for tile in row:
            w = tile.tile.weight.detach()
            weights[o0:o0 + w.shape[0], i0:i0 + w.shape[1]] = w
            s = tile.mapping_scales if tile.mapping_scales is not None else torch.ones(w.shape[0])
            if tile.rpu_config.drift_compensation is not None:
                s = s * tile.alpha
            col.append(s.expand(w.shape[0]))
            o0 += w.shape[0]
        scales.append(torch.cat(col))
        i0 += row[0].in_size
    return weights, torch.stack(scales)


def _both(preset, seed, t_inference, shape=SHAPE, two_calls=False):
    cfg = ra.load_device_config(preset).replace(**TILES)
    if cfg.cxx_only_forward() and cxx_tiles_available() is not None:
        # AIHWKit's torch tiles reject these forward settings and its C++ tiles do not run with this
        # torch (`make test-reference` runs them): compare the engines on the torch-tile subset here
        cfg = cfg.torch_tile_subset()
    w = 0.2 * torch.randn(*shape, generator=torch.Generator().manual_seed(11))
    matrix = AnalogMatrix(w, None, cfg.rpu_config(), "expert", "blk.experts.3.down")
    stack = AnalogStack(w[None].clone(), ["blk.experts.3.down"], cfg.rpu_config(), "expert",
                        ReferenceStore("memory"), "k")
    assert matrix.native_reason is None
    if two_calls:
        matrix.program(seed, lazy=True)
        matrix.drift(t_inference, seed)
        stack.program(seed, lazy=True)
        stack.program(seed, t_inference)
    else:
        matrix.program(seed, t_inference)
        stack.program(seed, t_inference)
    return matrix, stack


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("t_inference", [None, 1.0, "preset"])
def test_same_seed_same_chip_in_both_engines_exactly(preset, t_inference):
    t = ra.load_device_config(preset).t_inference if t_inference == "preset" else t_inference
    matrix, stack = _both(preset, 5, t)
    weights, scales = _aihwkit_chip(matrix)
    assert stack.grid.count == 9
    assert torch.equal(stack.tiles[0], weights)
    assert torch.equal(stack.scales[0], scales)
    x = torch.randn(7, SHAPE[1], generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    y_matrix = matrix(x)
    torch.manual_seed(0)
    y_stack = stack.mvm(0, x)
    # the same tiles and scales; only the order of the float sums of the input slices differs
    assert torch.allclose(y_matrix, y_stack, rtol=1e-5, atol=1e-5 * float(y_stack.abs().max()))


@pytest.mark.parametrize("preset", ["pcm", "rram-cmo"])
def test_two_call_flow_is_the_one_call_chip_in_both_engines(preset):
    t = ra.load_device_config(preset).t_inference
    one_matrix, one_stack = _both(preset, 2, t)
    two_matrix, two_stack = _both(preset, 2, t, two_calls=True)
    assert torch.equal(one_stack.tiles, two_stack.tiles) and torch.equal(one_stack.scales, two_stack.scales)
    assert all(torch.equal(a, b) for a, b in zip(_aihwkit_chip(one_matrix), _aihwkit_chip(two_matrix)))


def test_different_seeds_or_names_give_different_chips():
    cfg = ra.load_device_config("pcm").replace(**TILES)
    w = 0.2 * torch.randn(*SHAPE, generator=torch.Generator().manual_seed(11))
    chips = []
    for seed, name in ((0, "a"), (1, "a"), (0, "b")):
        stack = AnalogStack(w[None].clone(), [name], cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
        stack.program(seed, 3600.0)
        chips.append(stack.tiles[0].clone())
    assert not torch.equal(chips[0], chips[1]) and not torch.equal(chips[0], chips[2])


def _chips(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every analog matrix's ``(tile weights, mapping x alpha)`` by matrix name, in either engine."""
    out = {}
    for module in model.modules():
        if isinstance(module, AnalogStack):
            for m, name in enumerate(module.names):
                if module.analog[m]:
                    out[name] = (module.tiles[m].float(), module.scales[m])
        elif isinstance(module, AnalogMatrix):
            out[module.matrix_name] = _aihwkit_chip(module)
    return out


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe"])
def test_converted_models_hold_the_same_chip_in_both_engines(family):
    """Routers, routed and shared experts of a whole model: every analog matrix, both engines."""
    cfg = ra.load_device_config("pcm").replace(max_input_size=16, max_output_size=16)
    chips = []
    for engine in ("stacked", "aihwkit"):
        model = ra.convert_to_analog_moe(tiny_model(family), cfg, engine=engine)
        model.program_analog_weights(seed=7)
        model.drift_analog_weights(3600.0)
        chips.append(_chips(model))
    stacked, aihwkit = chips
    assert set(stacked) == set(aihwkit) and len(stacked) >= 2 * (2 * 8 + 1)
    for name, (weights, scales) in aihwkit.items():
        assert torch.equal(stacked[name][0], weights), name
        assert torch.equal(stacked[name][1], scales), name


def test_input_range_rows_are_paired_with_stacked_rows():
    """The ``input-range`` method runs on the AIHWKit engine: its chip is the stacked engine's chip."""
    from romer_aihwkit.experiments.methods import apply_method, get_method, prepare_model

    cfg = ra.load_device_config("pcm").replace(max_input_size=16, max_output_size=16)
    digital = tiny_model("olmoe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the announced fallback to the AIHWKit engine
        ranged = prepare_model(digital, cfg.replace(noise_management="none"), get_method("input-range"))
    stacked = prepare_model(digital, cfg.replace(noise_management="none"), get_method("romer"))
    assert ranged.analog_state.engine == "aihwkit" and stacked.analog_state.engine == "stacked"
    ranged.program_analog_weights(seed=3, t_inference=60.0)
    apply_method(stacked, get_method("global"), 3, 60.0)
    a, b = _chips(stacked), _chips(ranged)
    assert set(a) == set(b)
    assert all(torch.equal(a[name][0], b[name][0]) for name in a)
