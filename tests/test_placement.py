"""Placement as data: one per-matrix placement decides analog (on which device) or digital."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tiny_models import FACTORIES, tiny_model

import romer_aihwkit as ra
from romer_aihwkit.analog.fingerprint import fingerprint
from romer_aihwkit.analog.matrix import WeightMatrix
from romer_aihwkit.analog.placement import DIGITAL, MatrixSite, by_role, default_placement
from romer_aihwkit.analog.state_io import _chip_tensors
from romer_aihwkit.errors import ArtifactError, InputError

X = torch.randint(3, 90, (1, 12), generator=torch.Generator().manual_seed(5))


def _convert(family: str, engine: str = "stacked", **kwargs):
    model = ra.convert_to_analog_moe(tiny_model(family), engine=engine, progress=False, **kwargs)
    model.program_analog_weights(seed=3)
    return model


def _logits(model) -> torch.Tensor:
    torch.manual_seed(0)  # the forward's output noise draws from the global generator
    with torch.no_grad():
        return model(X).logits


def _part(tensors: dict[str, torch.Tensor], word: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if word in k}


@pytest.mark.parametrize("engine", ["stacked", "aihwkit"])
@pytest.mark.parametrize("keywords", [
    {},
    {"analog_router": False},
    {"digital_experts": {0: [1, 5], 1: [0]}},
    {"digital_experts": [(1, 2)], "analog_attention": True},
])
def test_placement_of_the_keywords_is_bit_identical(engine, keywords):
    old = _convert("qwen2_moe", engine, device_config="pcm", **keywords)
    new = _convert("qwen2_moe", engine, placement=default_placement("pcm", **keywords))
    assert torch.equal(_logits(old), _logits(new))
    assert fingerprint(old) == fingerprint(new)
    a, b = old.analog_state, new.analog_state
    assert (a.analog_router, a.analog_attention, a.digital_experts, a.placement) == \
        (b.analog_router, b.analog_attention, b.digital_experts, b.placement)
    assert b.placement is None and ra.analog_summary(old) == ra.analog_summary(new)


def test_router_on_another_device_is_programmed_with_that_device():
    mixed = _convert("olmoe", placement=by_role({"router": "rram-wan2022"}, default="pcm"))
    pcm = _convert("olmoe", device_config="pcm")
    rram = _convert("olmoe", device_config="rram-wan2022")
    chips = {n: _chip_tensors(m) for n, m in (("mixed", mixed), ("pcm", pcm), ("rram", rram))}
    router_keys = [k for k in chips["mixed"] if ".gate.matrix" in k]
    expert_keys = [k for k in chips["mixed"] if ".experts." in k]
    assert router_keys and expert_keys
    for key in router_keys:  # the same tile as the all-rram chip, not the pcm one
        assert torch.equal(chips["mixed"][key], chips["rram"][key]), key
    assert any(not torch.equal(chips["mixed"][k], chips["pcm"][k]) for k in router_keys)
    for key in expert_keys:
        assert torch.equal(chips["mixed"][key], chips["pcm"][key]), key
    state = mixed.analog_state
    assert state.device_config.name == "pcm"  # the device of most matrices
    assert state.placement["roles"]["router"] == {"rram-wan2022": 2}
    assert state.placement["roles"]["expert"] == {"pcm": 32}
    assert fingerprint(mixed)["device"] != fingerprint(pcm)["device"]
    assert [d.name for d in state.devices] == ["rram-wan2022", "pcm"]
    allowed = ra.load_device_config("pcm").replace(allowed_t_inference=[60.0], t_inference=60.0)
    picky = _convert("olmoe", placement=by_role({"router": allowed}, default="pcm")).analog_state
    assert picky.check_t_inference(60.0) == 60.0
    with pytest.raises(InputError, match="not supported"):
        picky.check_t_inference(3600.0)  # allowed by the experts' device, not by the routers'


def test_digital_placement_leaves_the_matrix_exactly_digital():
    model = tiny_model("qwen2_moe")
    block = model.model.layers[0].mlp
    router_w = block.gate.weight.detach().clone()
    shared_w = block.shared_expert.gate_proj.weight.detach().clone()
    converted = ra.convert_to_analog_moe(model, placement={"expert": "pcm"}, progress=False)  # a {role: device} table
    converted.program_analog_weights(seed=0)
    router = converted.model.layers[0].mlp.gate.matrix
    assert isinstance(router, WeightMatrix) and not router.is_analog
    h = torch.randn(4, router_w.shape[1])
    assert torch.equal(router(h), torch.nn.functional.linear(h, router_w))
    shared = converted.model.layers[0].mlp.shared_expert.gate_proj
    assert not shared.is_analog and torch.equal(shared.weight, shared_w)
    assert isinstance(converted.model.layers[0].self_attn.q_proj, torch.nn.Linear)  # attention untouched
    summary = ra.analog_summary(converted)
    assert summary["router"] == summary["shared_expert"] == 0 and summary["expert"] == 32
    state = converted.analog_state
    assert state.analog_router is False and state.placement is not None  # shared experts digital: no keyword says it


def _untouched(model, before) -> bool:
    return (getattr(model, "analog_state", None) is None
            and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
            and not any(isinstance(m, WeightMatrix) for m in model.modules()))


@pytest.mark.parametrize("placement, message", [
    (lambda site: "pcmm" if site.role == "router" else "pcm", "does not load"),
    (lambda site: 3, "int"),
    (lambda site: None, "NoneType"),
    (lambda site: DIGITAL if site.expert == 99 else ["pcm"], "list"),
    (default_placement("pcm", digital_experts={0: [8]}), "expert 8 out of range"),
    (default_placement("pcm", digital_experts={2: [0]}), "MoE layer 2 out of range"),
    (by_role({"expert": "pcm", "attention": "nope"}), "does not load"),
    ("pcm", "placement must be"),
])
def test_bad_placements_are_refused_before_the_model_is_touched(placement, message):
    model = tiny_model("olmoe")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match=message):
        ra.convert_to_analog_moe(model, placement=placement, progress=False)
    assert _untouched(model, before)


def test_bad_placement_helpers_and_combinations():
    with pytest.raises(InputError, match="unknown role 'routers'"):
        by_role({"routers": "pcm"})
    with pytest.raises(InputError, match="not a device config"):
        by_role({"router": 1.5})
    with pytest.raises(InputError, match="pairs"):
        default_placement("pcm", digital_experts=[3])
    with pytest.raises(InputError, match="takes a device"):
        default_placement(DIGITAL)
    model = tiny_model("olmoe")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match="analog_router"):
        ra.convert_to_analog_moe(model, placement={"expert": "pcm"}, analog_router=False)
    assert _untouched(model, before)


def test_each_matrix_asks_once_and_each_device_loads_once(monkeypatch):
    import romer_aihwkit.analog.convert as convert_module
    import romer_aihwkit.analog.placement as placement_module
    import romer_aihwkit.devices as devices

    loads: list[str] = []
    real = devices.load_device_config
    counting = lambda x: (loads.append(str(x)), real(x))[1]  # noqa: E731
    monkeypatch.setattr(devices, "load_device_config", counting)
    for where in (convert_module, placement_module):  # the loader as each module of the conversion holds it
        monkeypatch.setattr(where, "load_device_config", counting)
    asked: list[MatrixSite] = []

    def placement(site: MatrixSite):
        asked.append(site)
        return "rram-wan2022" if site.role == "router" else "pcm"

    model = ra.convert_to_analog_moe(tiny_model("olmoe"), placement=placement, progress=False)
    names = [s.name for s in asked]
    assert len(names) == len(set(names)) == 2 + 2 * 2 * 8 + 2 * 4  # routers, expert matrices, attention
    assert {s.role for s in asked} == {"router", "expert", "attention"}
    assert MatrixSite("expert", 1, 3, "model.layers.1.mlp.experts.3.down") in asked
    assert MatrixSite("attention", None, None, "model.layers.0.self_attn.q_proj") in asked
    assert sorted(loads) == ["pcm", "rram-wan2022"]
    assert ra.analog_summary(model)["attention"] == 8


def test_mixed_expert_bank_needs_the_aihwkit_engine():
    def placement(site):
        return "hermes-pcm" if site.expert == 0 else "pcm"

    model = tiny_model("olmoe")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match="engine='aihwkit'"):
        ra.convert_to_analog_moe(model, placement=placement, progress=False)
    assert _untouched(model, before)
    mixed = _convert("olmoe", "aihwkit", placement=placement)
    pcm = _convert("olmoe", "aihwkit", device_config="pcm")
    hermes = _convert("olmoe", "aihwkit", device_config="hermes-pcm")
    chips = [_chip_tensors(m) for m in (mixed, pcm, hermes)]
    for key in _part(chips[0], ".experts."):
        expected = chips[2] if ".experts.gate_up.0/" in key or ".experts.down.0/" in key else chips[1]
        assert torch.equal(chips[0][key], expected[key]), key


def test_engine_fallback_considers_every_device():
    ranges = ra.load_device_config("pcm").replace(input_range={"enable": True})
    with pytest.warns(RuntimeWarning, match="static input ranges"):
        model = _convert("olmoe", placement=by_role({"router": ranges}, default="pcm"))
    assert model.analog_state.engine == "aihwkit"


def test_chip_state_and_calibration_refuse_another_placement(tmp_path):
    def routers_on(device):
        return by_role({"router": device}, default="pcm")

    mixed = _convert("olmoe", placement=routers_on("rram-wan2022"))
    mixed.save_chip_state(tmp_path / "chip.safetensors")
    ra.save_calibration(mixed, tmp_path / "calib")
    same = _convert("olmoe", placement=routers_on("rram-wan2022"))
    same.load_chip_state(tmp_path / "chip.safetensors")
    ra.load_calibration(same, tmp_path / "calib")
    for other in (_convert("olmoe", placement=routers_on("aihwkit-standard")), _convert("olmoe", device_config="pcm")):
        with pytest.raises(ArtifactError, match="device"):
            other.load_chip_state(tmp_path / "chip.safetensors")
        with pytest.raises(ArtifactError, match="device"):
            ra.load_calibration(other, tmp_path / "calib")


def test_hetero_is_a_placement():
    from romer_aihwkit.baselines import hetero_placement, select_hetero_experts

    model = tiny_model("mixtral")
    keywords = _convert("mixtral", device_config="pcm", digital_experts=select_hetero_experts(model, 0.25))
    placed = _convert("mixtral", placement=hetero_placement(model, "pcm", 0.25))
    assert torch.equal(_logits(keywords), _logits(placed))
    assert placed.analog_state.digital_experts == keywords.analog_state.digital_experts
    assert sum(map(len, placed.analog_state.digital_experts.values())) == 2 * 2


def test_diagnosis_switches_are_placements():
    """"Router, shared expert and attention digital, the rest on X" and "component C on Y"."""
    experts_only = by_role({"router": DIGITAL, "shared_expert": DIGITAL, "attention": DIGITAL}, default="pcm")
    model = _convert("qwen2_moe", placement=experts_only)
    summary = ra.analog_summary(model)
    assert summary["expert"] == 32 and summary["router"] == summary["shared_expert"] == summary["attention"] == 0
    one_on_y = _convert("qwen2_moe", placement=by_role({"shared_expert": "rram-wan2022"},
                                                      default=default_placement("pcm", analog_router=False)))
    assert one_on_y.analog_state.placement["roles"]["shared_expert"] == {"rram-wan2022": 6}
    assert one_on_y.analog_state.placement["roles"]["router"] == {"digital": 2}


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_every_family_asks_about_every_matrix(family):
    asked: list[MatrixSite] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ra.convert_to_analog_moe(tiny_model(family), placement=lambda s: asked.append(s) or "pcm",
                                         progress=False)
    analog = {m.matrix_name.replace("..", ".") for m in model.modules() if isinstance(m, WeightMatrix) and m.is_analog}
    stacked = sum(ra.analog_summary(model).values()) - ra.analog_summary(model)["digital"]
    assert len(asked) == stacked and analog <= {s.name for s in asked}
