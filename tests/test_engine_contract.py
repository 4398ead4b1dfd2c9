"""One engine contract: both engines' banks answer the same calls with the same chip, and no module
outside the engine modules asks which engine it holds.

The behavioural half builds one small bank (three matrices of 3 x 3 tiles, one kept digital) on
each engine from the same weights and drives both through the :class:`~romer_aihwkit.analog.bank.AnalogBank`
protocol only: programming (eager, lazy, drifted), the MVM, clean references, replica sources,
replaced references and chip-state save/load. The static half scans the package's sources.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import romer_aihwkit as ra
from romer_aihwkit.analog.bank import AnalogBank, TileHolder
from romer_aihwkit.analog.engines import ENGINES, AIHWKitEngine, Engine, StackedEngine, engine_of, resolve_engine
from romer_aihwkit.errors import InputError

SHAPE = (3, 48, 40)  # three matrices on 16 x 16 tiles: 3 output x 3 input tiles each
TILES = dict(max_input_size=16, max_output_size=16)
NAMES = [f"blk.experts.{e}.down" for e in range(3)]
ANALOG = [True, True, False]


def _config():
    return ra.load_device_config("pcm").replace(**TILES)


def _weights() -> torch.Tensor:
    return 0.2 * torch.randn(*SHAPE, generator=torch.Generator().manual_seed(11))


def _bank(engine: Engine) -> AnalogBank:
    factory = engine.rpu_config_factory(_config())
    return engine.bank(_weights(), list(NAMES), "expert", "blk.experts.down", [factory if a else None for a in ANALOG])


def _holders(bank: AnalogBank) -> list[TileHolder]:
    assert isinstance(bank, torch.nn.Module)
    return [m for m in bank.modules() if isinstance(m, TileHolder)]


def _x() -> torch.Tensor:
    return torch.randn(5, SHAPE[2], generator=torch.Generator().manual_seed(2))


def _outputs(bank: AnalogBank) -> list[torch.Tensor]:
    out = []
    for m in range(len(bank)):
        torch.manual_seed(0)  # the same output-noise draws in both engines
        out.append(bank.mvm(m, _x()))
    return out


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    # the same tiles and scales; only the order of the float sums of the input slices may differ
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-5 * float(y.abs().max())) for x, y in zip(a, b))


@pytest.fixture(params=ENGINES)
def engine(request) -> Engine:
    return StackedEngine() if request.param == "stacked" else AIHWKitEngine()


def test_both_engines_build_banks_of_the_protocol(engine):
    bank = _bank(engine)
    assert isinstance(bank, AnalogBank)
    assert (len(bank), bank.out_features, bank.in_features) == SHAPE
    assert bank.analog == ANALOG and bank.names == NAMES and bank.bias is None
    assert _holders(bank), "a bank's tiles must be part of the chip state"
    for m in range(len(bank)):
        assert torch.equal(bank.reference(m).float(), _weights()[m])


def test_the_same_seed_is_the_same_chip_through_the_protocol():
    stacked, aihwkit = _bank(StackedEngine()), _bank(AIHWKitEngine())
    for bank in (stacked, aihwkit):
        bank.program(5, 3600.0)
    a, b = _outputs(stacked), _outputs(aihwkit)
    assert _close(a, b)
    assert torch.equal(a[2], b[2])  # the digital matrix: a plain matmul in both
    assert torch.allclose(a[2], _x() @ _weights()[2].T, atol=1e-6)
    other = _bank(StackedEngine())
    other.program(6, 3600.0)
    assert not _close(_outputs(other), a), "another seed must be another chip"


def test_lazy_programming_is_the_eager_chip_in_both_engines(engine):
    eager, lazy = _bank(engine), _bank(engine)
    eager.program(3, 60.0)
    lazy.program(3, lazy=True)
    assert lazy.pending == sum(ANALOG)
    lazy.program(3, 60.0, lazy=True)
    lazy.materialise()
    assert lazy.pending == 0
    assert all(torch.equal(x, y) for x, y in zip(_outputs(eager), _outputs(lazy)))


def test_replica_sources_and_references_behave_alike():
    results = []
    for engine in (StackedEngine(), AIHWKitEngine()):
        bank = _bank(engine)
        bank.program(4, 60.0)
        bank.set_source(1, 0)  # matrix 1's tiles now hold matrix 0's weights (its own seeds)
        bank.program(4, 60.0, which=[1])
        assert torch.equal(bank.reference(1).float(), _weights()[1]), "a replica keeps its own clean weights"
        replica = _outputs(bank)[1]
        bank.set_source(1, 1)
        bank.program(4, 60.0, which=[1])
        own = _outputs(bank)[1]
        new = 0.1 * torch.ones(SHAPE[1], SHAPE[2])
        bank.set_reference(0, new)
        bank.program(4, 60.0, which=[0])
        assert torch.equal(bank.reference(0).float(), new)
        results.append((replica, own, _outputs(bank)[0]))
    (s_rep, s_own, s_new), (a_rep, a_own, a_new) = results
    assert _close([s_rep, s_own, s_new], [a_rep, a_own, a_new])
    assert not torch.allclose(s_rep, s_own), "the replica must hold the source's weights"


def test_chip_state_round_trips_in_both_engines(engine):
    bank, fresh = _bank(engine), _bank(engine)
    bank.program(8, 3600.0)
    fresh.program(9, 3600.0)
    for mine, theirs in zip(_holders(bank), _holders(fresh)):
        state = {k: v.clone() for k, v in mine.chip_state().items()}
        assert theirs.check_chip_state(state) is None
        theirs.load_chip_state(state)
    assert all(torch.equal(x, y) for x, y in zip(_outputs(bank), _outputs(fresh)))


@pytest.mark.parametrize("compensation", ["global", "per-column"])
@pytest.mark.parametrize("drift", [None, 3600.0], ids=["not-drifted", "drifted"])
@pytest.mark.parametrize("target", ["fresh", "another-chip"])
def test_a_chip_state_file_loads_onto_any_model_converted_alike(engine, compensation, drift, target, tmp_path, tokens):
    """Whether the saved chip was drifted and whether the model it is loaded onto was programmed (with
    another seed, drifted to another time) or not, the file's chip is what the model holds after."""
    from tiny_models import tiny_model

    device = ra.load_device_config("pcm").replace(drift_compensation=compensation)

    def converted():
        return ra.convert_to_analog_moe(tiny_model("olmoe"), device, engine=engine.name, progress=False)

    saved = converted()
    if drift is None:
        saved.program_analog_weights(seed=1, progress=False)
    else:
        saved.program_analog_weights(seed=1, t_inference=drift, progress=False)
    path = saved.save_chip_state(tmp_path / "chip.safetensors")
    model = converted()
    if target == "another-chip":
        model.program_analog_weights(seed=5, t_inference=100.0, progress=False)
    model.load_chip_state(path)
    assert (model.analog_state.seed, model.analog_state.t_inference) == (1, saved.analog_state.t_inference)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = saved(tokens).logits
        torch.manual_seed(0)
        assert torch.equal(model(tokens).logits, expected)


def test_resolve_engine_refuses_and_falls_back():
    config = ra.load_device_config("pcm")
    assert resolve_engine(config, "stacked").name == "stacked"
    assert resolve_engine(config, "aihwkit").name == "aihwkit"
    with pytest.raises(InputError, match="engine='nope'"):
        resolve_engine(config, "nope")
    with pytest.raises(InputError, match="reference"):
        resolve_engine(config, "stacked", reference="nowhere")


def test_a_converted_model_names_its_engine(engine):
    from tiny_models import tiny_model

    model = ra.convert_to_analog_moe(tiny_model("olmoe"), "pcm", engine=engine.name, progress=False)
    again = engine_of(model.analog_state)
    assert type(again) is type(engine) and again.store is model.analog_state.reference


# --------------------------------------------------------------------------- no engine branches
PACKAGE = Path(__file__).resolve().parent.parent / "romer_aihwkit"
ENGINE_MODULES = {"analog/engines.py", "analog/bank.py", "analog/stacked.py", "analog/matrix.py"}
"""The engines themselves: the only modules that may know which engine a module belongs to."""
ENGINE_TYPES = {"AnalogStack", "AnalogMatrix", "MatrixBank", "StackedMatrix", "StackedEngine", "AIHWKitEngine"}
ENGINE_NAMES = {"stacked", "aihwkit"}


def _names(node: ast.AST) -> set[str]:
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
            if isinstance(n, (ast.Name, ast.Attribute))}


def engine_branches(source: str) -> list[str]:
    """``isinstance``/``type() is`` tests against an engine's classes, and comparisons of an ``engine``
    value with an engine's name, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            if len(node.args) == 2 and _names(node.args[1]) & ENGINE_TYPES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            strings = {p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)}
            if strings & ENGINE_NAMES and any("engine" in name.lower() for p in parts for name in _names(p)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
            elif any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops) and _names(node) & ENGINE_TYPES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_engines_branches_on_the_engine():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ENGINE_MODULES or "bundled" in path.parts:
            continue
        offenders += [f"{rel} {hit}" for hit in engine_branches(path.read_text(encoding="utf-8"))]
    assert not offenders, ("engine branches outside the engine modules (call the bank protocol or an Engine "
                           "instead):\n" + "\n".join(offenders))


@pytest.mark.parametrize("source", [
    "from .stacked import AnalogStack\nif isinstance(bank, AnalogStack):\n    pass\n",
    "ok = isinstance(m, (nn.Linear, matrix.AnalogMatrix))\n",
    "ok = isinstance(m, AnalogMatrix | MatrixBank)\n",
    "if state.engine == 'stacked':\n    pass\n",
    "x = 1 if 'aihwkit' != self.engine else 2\n",
    "if type(bank) is AnalogStack:\n    pass\n",
])
def test_the_checker_finds_engine_branches(source):
    assert engine_branches(source)


def test_the_checker_leaves_other_code_alone():
    assert not engine_branches("if isinstance(m, WeightMatrix) and m.role == 'expert':\n    pass\n"
                               "name = engine.name\nif reason == 'stacked':\n    pass\n")


# --------------------------------------------------------------------------- AIHWKit internals
def test_a_changed_aihwkit_internal_fails_loudly_with_the_version():
    from types import SimpleNamespace

    from romer_aihwkit.compat import aihwkit as compat
    from romer_aihwkit.errors import EngineError

    renamed = SimpleNamespace(programmed_weights=None)  # a tile whose other programming attributes were renamed
    with pytest.raises(EngineError, match=rf"AIHWKit {compat.version()} changed .*reference_combined_weights"):
        compat.clear_programming_state(renamed)
    assert not hasattr(renamed, "reference_combined_weights"), "nothing may be set on a tile that lacks it"
    with pytest.raises(EngineError, match="AIHWKit .* changed"):
        compat.tile_state(SimpleNamespace(**{a: None for a in compat.TILE_STATE_ATTRS}, drift_noise_parameters=None))
