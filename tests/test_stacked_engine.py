"""The stacked engine against AIHWKit's per-matrix tiles (the reference), and its bookkeeping."""

import warnings

import pytest
import torch
from safetensors import safe_open
from tiny_models import tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog import AnalogExperts
from romer_aihwkit.analog.matrix import AnalogMatrix
from romer_aihwkit.analog.reference import ReferenceStore
from romer_aihwkit.analog.stacked import AnalogStack, split_sizes

SHAPE = (48, 40)  # on 16 x 16 tiles: 3 output x 3 input tiles (40 = 14 + 13 + 13)
TILES = dict(max_input_size=16, max_output_size=16)
PRESETS = ["pcm", "hermes-pcm", "rram-wan2022", "rram-cmo", "gaussian-5", "aihwkit-standard"]
SEEDS = range(6)


def _weights(m=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 * torch.randn(m, *SHAPE, generator=g)


def _aihwkit_effective(matrix: AnalogMatrix):
    """``(effective weight incl. mapping and drift alpha, alpha per tile column [S_in, out])`` of AIHWKit's tiles."""
    module = matrix.analog.analog_module
    grid = [list(row) for row in module.array]
    out, alphas = torch.zeros(SHAPE), torch.ones(len(grid), SHAPE[0])
    i0 = 0
    for s, row in enumerate(grid):
        o0 = 0
        for tile in row:
            w = tile.tile.weight.detach()
            scale = tile.mapping_scales.reshape(-1, 1) if tile.mapping_scales is not None else 1.0
            alpha = tile.alpha.detach().reshape(-1, 1) if tile.rpu_config.drift_compensation is not None else torch.ones(1, 1)
            out[o0 : o0 + w.shape[0], i0 : i0 + w.shape[1]] = w * scale * alpha
            alphas[s, o0 : o0 + w.shape[0]] = alpha.reshape(-1)
            o0 += w.shape[0]
        i0 += row[0].in_size
    return out, alphas


def _stacked_effective(stack: AnalogStack, m=0):
    out = torch.zeros(SHAPE)
    for s, (i0, i1) in enumerate(stack.grid.in_bounds):
        out[:, i0:i1] = stack.tiles[m, :, i0:i1].float() * stack.scales[m, s].reshape(-1, 1)
    return out


def _mapping(w, grid_rows, grid_cols, cfg):
    """AIHWKit's per-tile mapping scale of each output row ``[S_in, out]``."""
    scales = torch.ones(len(grid_cols), SHAPE[0])
    i0 = 0
    for s, n_in in enumerate(grid_cols):
        o0 = 0
        for n_out in grid_rows:
            blk = w[o0 : o0 + n_out, i0 : i0 + n_in]
            if cfg.weight_remap == "channelwise_symmetric":
                scales[s, o0 : o0 + n_out] = blk.abs().amax(dim=1)
            elif cfg.weight_remap == "layerwise_symmetric":
                scales[s, o0 : o0 + n_out] = blk.abs().amax()
            o0 += n_out
        i0 += n_in
    return scales


def _errors(preset, engine):
    """Programmed-weight errors, drift alphas and output errors over chip instances ``SEEDS``.

    AIHWKit's torch tiles are the reference here, so the C++-only forward non-idealities (per-MVM
    read noise, IR drop) are off on both sides; tests/test_cxx_reference.py compares those with
    AIHWKit's C++ tiles."""
    cfg = ra.load_device_config(preset).replace(**TILES).torch_tile_subset()
    w = _weights()[0]
    x = torch.randn(256, SHAPE[1], generator=torch.Generator().manual_seed(5))
    werr, alphas, yerr = [], [], []
    mapping = _mapping(w, split_sizes(SHAPE[0], 16), split_sizes(SHAPE[1], 16), cfg)
    for seed in SEEDS:
        if engine == "aihwkit":
            matrix = AnalogMatrix(w, None, cfg.rpu_config(), "expert", "m", aihwkit_programming=True)
            matrix.program(seed, cfg.t_inference)
            eff, alpha = _aihwkit_effective(matrix)
            with torch.no_grad():
                y = matrix(x)
        else:
            stack = AnalogStack(w[None].clone(), ["m"], cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
            stack.program(seed, cfg.t_inference)
            eff = _stacked_effective(stack)
            alpha = stack.scales[0] / mapping
            with torch.no_grad():
                y = stack.mvm(0, x)
        werr.append(eff - w)
        alphas.append(alpha)
        yerr.append(y - x @ w.T)
    return torch.stack(werr), torch.stack(alphas), torch.stack(yerr)


@pytest.mark.parametrize("preset", PRESETS)
def test_noise_statistics_match_aihwkit_tiles(preset):
    """Several tiles per matrix; mean/std of weight and output errors and the drift alphas agree."""
    ref_w, ref_a, ref_y = _errors(preset, "aihwkit")
    new_w, new_a, new_y = _errors(preset, "stacked")
    for ref, new, what in ((ref_w, new_w, "programmed weight error"), (ref_y, new_y, "output error")):
        n = ref.numel()
        assert abs(new.std() / ref.std() - 1) < 0.08, (what, new.std(), ref.std())
        # mean within 4 standard errors of the difference (errors are correlated within a chip: be generous)
        se = (ref.var() / n + new.var() / n).sqrt() * 4
        assert abs(new.mean() - ref.mean()) < max(float(se), 0.02 * float(ref.std())), (what, new.mean(), ref.mean())
        # the error depends on the weight the same way: per-weight mean error over chips agrees
        per_weight = (new.mean(0) - ref.mean(0)).pow(2).mean().sqrt()
        assert per_weight < 0.75 * ref.std(), (what, per_weight, ref.std())
    assert abs(new_a.mean() - ref_a.mean()) < 0.02 * max(1.0, float(ref_a.mean())), (new_a.mean(), ref_a.mean())
    assert abs(new_a.std() - ref_a.std()) < 0.02 + 0.25 * float(ref_a.std())


def test_ideal_stack_is_exact():
    cfg = ra.load_device_config("ideal")
    w = _weights(3)
    stack = AnalogStack(w.clone(), ["a", "b", "c"], cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
    stack.program(0, 3600.0)
    x = torch.randn(7, SHAPE[1])
    for m in range(3):
        assert torch.allclose(stack.mvm(m, x), x @ w[m].T, atol=1e-5)


def test_matrices_of_one_chip_draw_independent_noise():
    """Same weights, same seed, different matrix names: different, uncorrelated programming noise."""
    cfg = ra.load_device_config("gaussian-5")
    w = _weights(1).expand(4, -1, -1).clone()
    stack = AnalogStack(w.clone(), [f"layer.experts.{e}.gate_up" for e in range(4)], cfg.rpu_config(), "expert",
                        ReferenceStore("memory"), "k")
    stack.program(seed=0)
    noise = torch.stack([_stacked_effective(stack, m) - w[m] for m in range(4)]).flatten(1)
    corr = torch.corrcoef(noise)
    off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.2, corr


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
def test_model_experts_with_identical_weights_get_different_noise(engine):
    model = tiny_model("olmoe")
    with torch.no_grad():
        experts = model.model.layers[0].mlp.experts
        experts.gate_up_proj[:] = experts.gate_up_proj[0].clone()
    ra.convert_to_analog_moe(model, "gaussian-5", engine=engine)
    model.program_analog_weights(seed=0)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    x = torch.randn(16, experts.own_weights(0)[0].shape[1])
    with torch.no_grad():
        outs = [experts.gate_up.mvm(e, x) for e in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_chip_instance_independent_of_programming_order():
    cfg = ra.load_device_config("pcm").replace(**TILES)
    w = _weights(4)
    names = [f"e{i}" for i in range(4)]
    a = AnalogStack(w.clone(), names, cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
    b = AnalogStack(w.clone(), names, cfg.rpu_config(), "expert", ReferenceStore("memory"), "k")
    a.program(3, 60.0)
    b.program(3, 60.0, which=[2, 0, 3, 1])
    assert torch.equal(a.tiles, b.tiles) and torch.equal(a.scales, b.scales)
    b.program(3, 60.0, which=[1])  # re-programming one matrix reproduces it bit for bit
    assert torch.equal(a.tiles, b.tiles)


def test_drift_reprograms_the_same_chip():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    model.program_analog_weights(seed=4, t_inference=86400.0)
    stack = next(m for m in model.modules() if isinstance(m, AnalogStack))
    once = stack.tiles.clone()
    model.program_analog_weights(seed=4)
    model.drift_analog_weights(86400.0)
    assert torch.equal(stack.tiles, once)


@pytest.mark.parametrize("mode", ["memory", "spill"])
def test_reference_store_keeps_clean_weights(mode, tmp_path):
    w = _weights(3)
    store = ReferenceStore(mode, tmp_path if mode == "spill" else None)
    stack = AnalogStack(w.clone(), ["a", "b", "c"], ra.load_device_config("pcm").rpu_config(), "expert", store, "blk.experts.down")
    stack.program(0, 3600.0)
    assert not torch.allclose(stack.tiles[1], w[1])
    assert torch.equal(stack.reference(1), w[1])
    stack.set_reference(2, torch.ones(SHAPE))
    assert torch.equal(stack.reference(2), torch.ones(SHAPE)) and torch.equal(stack.reference(0), w[0])
    if mode == "spill":
        assert store.nbytes_in_memory() == 0
        files = list(tmp_path.glob("*.safetensors"))
        with safe_open(str(files[0]), framework="pt") as f:  # a standard safetensors file
            assert torch.equal(f.get_tensor("weight")[0], w[0])


@pytest.mark.parametrize("mode", ["memory", "spill"])
def test_deep_copies_of_a_converted_model_do_not_share_clean_weights(mode):
    import copy

    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm", reference=mode)
    twin = copy.deepcopy(model)
    store, twin_store = model.analog_state.reference, twin.analog_state.reference
    assert twin_store is not store
    stack = next(m for m in model.modules() if isinstance(m, AnalogStack) and m.role == "expert")
    twin_stack = next(m for m in twin.modules() if isinstance(m, AnalogStack) and m.role == "expert")
    assert twin_stack.store is twin_store  # one store per copy, shared by its stacks and its state
    before = stack.reference(1).clone()
    assert torch.equal(twin_stack.reference(1), before)
    twin_stack.set_reference(1, torch.zeros_like(before))
    assert torch.equal(stack.reference(1), before)
    assert torch.equal(twin_stack.reference(1), torch.zeros_like(before))
    model.program_analog_weights(seed=0, t_inference=60.0)
    twin.program_analog_weights(seed=0, t_inference=60.0)
    assert not torch.equal(stack.tiles[1], twin_stack.tiles[1]) and torch.equal(stack.tiles[0], twin_stack.tiles[0])


def test_spill_takes_over_the_weight_storage_and_frees_no_copy():
    model = tiny_model("olmoe")
    param = model.model.layers[0].mlp.experts.gate_up_proj
    ptr = param.data_ptr()
    ra.convert_to_analog_moe(model, "pcm", reference="spill")
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    assert experts.gate_up.tiles.data_ptr() == ptr  # tiles live where the digital weights were
    assert model.analog_state.reference.nbytes_in_memory() == 0


def test_replicas_program_from_the_hot_experts_weights():
    cfg = ra.load_device_config("ideal")
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), cfg)
    model.program_analog_weights(seed=0, t_inference=0.0)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    own = experts.own_weights(3)
    experts.set_replica(hot=1, cold=3)
    experts.reprogram(3, seed=0, t_inference=0.0)
    x = torch.randn(5, own[0].shape[1])
    with torch.no_grad():
        assert torch.allclose(experts.gate_up.mvm(3, x), experts.gate_up.mvm(1, x), atol=1e-5)
    assert torch.equal(experts.own_weights(3)[0], own[0])
    experts.clear_replicas()
    experts.reprogram(3, seed=0, t_inference=0.0)
    with torch.no_grad():
        assert torch.allclose(experts.gate_up.mvm(3, x), x @ own[0].T, atol=1e-5)


def test_replica_tiles_drift_at_t_zero_like_the_others():
    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm")
    model.program_analog_weights(seed=1, t_inference=0.0)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    before = experts.gate_up.tiles[2].clone()
    experts.reprogram(2, seed=1, t_inference=0.0)  # the same tile, programmed and read at t = 0
    assert torch.equal(experts.gate_up.tiles[2], before)


def test_unreproduced_setting_falls_back_with_one_warning():
    from romer_aihwkit.analog import engines

    engines._WARNED.clear()
    cfg = ra.load_device_config("pcm").replace(noise_management="none", input_range={"enable": True, "init_value": 3.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ra.convert_to_analog_moe(tiny_model("olmoe"), cfg)
        ra.convert_to_analog_moe(tiny_model("olmoe"), cfg)
    messages = [str(w.message) for w in caught if "stacked analog engine" in str(w.message)]
    assert len(messages) == 1 and "input range" in messages[0]
    assert model.analog_state.engine == "aihwkit"


def test_bf16_model_keeps_bf16_tiles_and_routes_like_digital_under_ideal():
    model = tiny_model("deepseek_v3").to(torch.bfloat16)
    tokens = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(0))
    digital = []
    hooks = [m.register_forward_hook(lambda mod, i, o: digital.append(o[1] if isinstance(o, tuple) else o))
             for m in model.modules() if type(m).__name__.endswith("TopkRouter") or type(m).__name__.endswith("TopKRouter")]
    with torch.no_grad():
        ref = model(tokens).logits
    for h in hooks:
        h.remove()
    ra.convert_to_analog_moe(model, "ideal")
    model.program_analog_weights(seed=0)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    assert experts.gate_up.tiles.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(tokens).logits
    assert torch.allclose(out.float(), ref.float(), atol=2e-2)


def test_chip_state_of_the_stacked_engine_round_trips(tmp_path):
    from romer_aihwkit.analog import load_analog_state, save_analog_state

    model = ra.convert_to_analog_moe(tiny_model("qwen2_moe"), "pcm")
    model.program_analog_weights(seed=2, t_inference=3600.0)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    experts.set_replica(0, 5)
    experts.reprogram(5, 2, 3600.0)
    save_analog_state(model, tmp_path / "chip.safetensors")
    other = ra.convert_to_analog_moe(tiny_model("qwen2_moe"), "pcm")
    other.program_analog_weights(seed=9, t_inference=3600.0)
    load_analog_state(other, tmp_path / "chip.safetensors")
    x = torch.randint(3, 90, (1, 12))
    torch.manual_seed(0)
    a = model(x).logits
    torch.manual_seed(0)
    b = other(x).logits
    assert torch.equal(a, b)
    assert int(next(m for m in other.modules() if isinstance(m, AnalogExperts)).replica_of[0]) == 5


def test_tile_dtype_option_keeps_fp32_tiles_for_a_bf16_model():
    model = tiny_model("olmoe").to(torch.bfloat16)
    ra.convert_to_analog_moe(model, "pcm", tile_dtype=torch.float32)
    experts = next(m for m in model.modules() if isinstance(m, AnalogExperts))
    assert experts.gate_up.tiles.dtype == torch.float32 and experts.own_weights(0)[0].dtype == torch.bfloat16


def test_bf16_deepseek_v2_routes_exactly_like_digital_under_ideal():
    """The router computes in fp32 like transformers' DeepSeek-V2 gate, so no token picks other experts."""
    from romer_aihwkit.analog import trace_routing

    model = tiny_model("deepseek_v2").to(torch.bfloat16)
    tokens = torch.randint(3, 90, (4, 32), generator=torch.Generator().manual_seed(1))
    picked = []
    gates = [m for m in model.modules() if type(m).__name__ == "DeepseekV2TopkRouter" or type(m).__name__.endswith("Gate")]
    hooks = [g.register_forward_hook(lambda mod, i, o: picked.append(o)) for g in gates]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    ra.convert_to_analog_moe(model, "ideal")
    model.program_analog_weights(seed=0)
    events = []
    with torch.no_grad(), trace_routing(model, events.append):
        model(tokens)
    assert len(events) == len(picked) > 0
    for ev, digital in list(zip(events, picked))[:1]:  # the first MoE layer sees the same hidden states
        logits = digital[0] if isinstance(digital, tuple) else digital
        assert logits.dtype == torch.float32
        assert torch.allclose(ev.noisy_logits, logits.reshape(ev.noisy_logits.shape), atol=1e-6, rtol=0)
