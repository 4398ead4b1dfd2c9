"""Where does the analog error come from? An error budget by component x non-ideality, per layer.

:func:`diagnose` converts the model several times, each time with one part of the simulation on
alone or one part off, programs the same chip instances (seeds) and measures perplexity:

* **components** (which matrices are on analog tiles): ``router``, ``expert``, ``shared_expert``
  (families that have them), ``attention`` (only with ``analog_attention``). A component that is
  "off" is kept digital (:func:`_convert`).
* **non-idealities** (device-config overrides, :class:`~romer_aihwkit.devices.DeviceConfig`):
  ``programming`` (``prog_noise_scale``; for ``rram-wan2022`` this scales all of that model's
  conductance spread), ``drift`` (``drift_scale``; the device's drift compensation stays as
  configured), ``read`` (``read_noise_scale``: accumulated 1/f read noise), ``periphery``
  (DAC/ADC quantisation and clipping plus additive output noise: ``dac_bits``, ``adc_bits``,
  ``inp_bound``, ``out_bound``, ``out_noise``), ``mvm-read`` (per-MVM weight read noise and input
  noise: ``w_noise``, ``inp_noise``), ``ir-drop`` (``ir_drop``, ``r_series``, ``out_nonlinearity``).
  Only those the device models are listed.

Rows of the budget (every ppl paired per chip instance, mean and 95 % Student-t CI):

* ``full``: everything on (the device as configured);
* ``alone``: only this component analog (all non-idealities), or only this non-ideality on (all
  components analog): ``delta_ppl`` = its cost on its own, vs the digital model;
* ``off``: everything but this part: ``removed`` = full - off, the cost removing it saves.

Per MoE layer, from the full configuration: the measurements of :mod:`romer_aihwkit.evaluation.probes`.

The chip instances run on the per-chip loop of every protocol (:mod:`.chip_loop`): with an
``out_dir`` each (setup, seed) row is appended to ``rows.jsonl`` at once, a rerun resumes, the
folder is locked, and a multi-process launch shards the chip instances. The result is a
:class:`~romer_aihwkit.evaluation.diagnosis_report.Diagnosis` (``to_dict()``: ``diagnosis.json``);
:mod:`romer_aihwkit.evaluation.diagnosis_report` writes the report.

Cost: ``(2 + 2 C + 2 N)`` conversions and ``(2 + 2 C + 2 N) x seeds`` programming passes plus
perplexity passes over the evaluation blocks (C components, N non-idealities; e.g. 14 x 3 for an
OLMoE model on ``pcm``), and one digital pass.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters import find_moe_blocks
from ..analog import DIGITAL, by_role, convert_to_analog_moe, default_placement
from ..analog.fingerprint import device_fingerprint
from ..analog.matrix import matrix_seed
from ..analog.model import AnalogMoEModel
from ..analog.trace import find_routers
from ..atomic import atomic_write_text
from ..checked_files import code_fingerprint
from ..errors import InputError, ResultsFolderError
from ..evaluation.diagnosis_report import Diagnosis, reading, write_diagnosis
from ..evaluation.perplexity import perplexity
from ..evaluation.probes import OUTLIER_RATIO, layer_statistics, weight_crest
from ..evaluation.stats import mean_std_ci
from ..stress import apply_stress, stress_label
from ..validate import check_seed, check_seeds
from .chip_loop import ChipLoop, chip_folder, clear_rows, process, shard
from .settings import resolve_device

__all__ = ["COMPONENTS", "NONIDEALITIES", "DiagnosisRow", "diagnose", "nonidealities_of"]


def _convert(digital: nn.Module, config, analog: frozenset[str], components: list[str],
             analog_attention: bool) -> AnalogMoEModel:
    """A converted copy of ``digital`` on ``config`` whose components outside ``analog`` stay digital
    (a placement: :func:`~romer_aihwkit.analog.placement.by_role` over the default one)."""
    placed = default_placement(config, analog_attention=analog_attention)
    off = {c: DIGITAL for c in components if c not in analog}
    return convert_to_analog_moe(copy.deepcopy(digital), config, placement=by_role(off, default=placed) if off else placed)


COMPONENTS = ("router", "expert", "shared_expert", "attention")
NONIDEALITIES: dict[str, dict[str, Any]] = {
    "programming": {"prog_noise_scale": 0.0},
    "drift": {"drift_scale": 0.0},
    "read": {"read_noise_scale": 0.0},
    "periphery": {"dac_bits": None, "adc_bits": None, "inp_bound": None, "out_bound": None, "out_noise": 0.0},
    "mvm-read": {"w_noise": 0.0, "w_noise_type": "none", "inp_noise": 0.0},
    "ir-drop": {"ir_drop": 0.0, "r_series": 0.0, "out_nonlinearity": 0.0, "slope_calibration": 0.0},
}
"""Each non-ideality and the device-config overrides that turn it off."""
_DRIFT_MODELS = ("pcm", "hermes-pcm", "rram-cmo")


def nonidealities_of(config) -> list[str]:
    """The non-idealities a device config models (and :func:`diagnose` can switch off), in budget order."""
    out = []
    if config.noise_model != "none" and config.prog_noise_scale > 0 and (config.noise_level or 1.0) > 0:
        out.append("programming")
    if config.noise_model in _DRIFT_MODELS and config.drift_scale > 0:
        out.append("drift")
    if config.noise_model in _DRIFT_MODELS and config.read_noise_scale > 0:
        out.append("read")
    if config.dac_bits is not None or config.adc_bits is not None or config.out_noise > 0 or config.inp_bound is not None \
            or config.out_bound is not None:
        out.append("periphery")
    if config.w_noise > 0 or config.inp_noise > 0:
        out.append("mvm-read")
    if config.ir_drop > 0 or config.r_series > 0 or config.out_nonlinearity > 0:
        out.append("ir-drop")
    return out


@dataclass(frozen=True)
class _Setup:
    """One configuration of the budget: which components are analog, which non-idealities are on."""

    kind: str  # full / alone / off / floor
    component: str
    nonideality: str
    analog: frozenset[str]
    on: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.component}:{self.nonideality}"


def _setups(components: list[str], nonideal: list[str]) -> list[_Setup]:
    all_c, all_n = frozenset(components), frozenset(nonideal)
    out = [_Setup("full", "all", "all", all_c, all_n)]
    out += [_Setup("alone", c, "all", frozenset([c]), all_n) for c in components]
    out += [_Setup("off", c, "all", all_c - {c}, all_n) for c in components if len(components) > 1]
    out += [_Setup("alone", "all", n, all_c, frozenset([n])) for n in nonideal]
    out += [_Setup("off", "all", n, all_c, all_n - {n}) for n in nonideal if len(nonideal) > 1]
    out.append(_Setup("floor", "all", "none", all_c, frozenset()))
    return out


def _device_for(base, on: frozenset[str], nonideal: list[str]):
    overrides: dict[str, Any] = {}
    for n in nonideal:
        if n not in on:
            overrides.update(NONIDEALITIES[n])
    return base.replace(**overrides) if overrides else base


# ------------------------------------------------------------------ the rows
_FIX = "remove that line, or pass --force to discard the folder's rows and start again"


@dataclass(frozen=True)
class DiagnosisRow:
    """One configuration of the budget on one chip instance (a line of a diagnosis folder's ``rows.jsonl``)."""

    kind: str
    """``full``, ``alone``, ``off`` or ``floor``."""
    component: str
    nonideality: str
    seed: int
    """The chip instance."""
    ppl: float
    layers: tuple[dict[str, Any], ...] | None = None
    """``full`` rows: per MoE layer, the probe statistics of this chip instance
    (:func:`~romer_aihwkit.evaluation.probes.layer_statistics`)."""
    weights: tuple[dict[str, Any], ...] | None = None
    """``full`` rows: per MoE layer, its router's name, expert count and weight crest factors (clean weights)."""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.kind, self.component, self.nonideality, int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "component": self.component, "nonideality": self.nonideality,
                               "seed": self.seed, "ppl": self.ppl}
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.weights is not None:
            out["weights"] = list(self.weights)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "diagnosis row") -> DiagnosisRow:
        """Read a row.

        Raises:
            ResultsFolderError: Not a diagnosis row (the message starts with ``where``).
        """
        keys = ("kind", "component", "nonideality", "seed", "ppl")
        if not isinstance(data, Mapping) or any(k not in data for k in keys):
            raise ResultsFolderError(f"{where}: not a diagnosis row; {_FIX}")
        try:
            seed, ppl = int(data["seed"]), float(data["ppl"])
        except (TypeError, ValueError):
            raise ResultsFolderError(f"{where}: seed/ppl are not numbers; {_FIX}") from None
        layers, weights = data.get("layers"), data.get("weights")
        return cls(str(data["kind"]), str(data["component"]), str(data["nonideality"]), seed, ppl,
                   None if layers is None else tuple(layers), None if weights is None else tuple(weights))


def _ci(values: list[float]) -> dict[str, float]:
    st = mean_std_ci(values)
    return {"mean": st["mean"], "ci95": st["ci95"]}


def _tensor_digest(digest: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _identity(digital: nn.Module, batches: torch.Tensor, calib_batches: torch.Tensor | None,
              numbers: Mapping[str, Any]) -> str:
    """What a diagnosis folder's rows depend on (the seeds aside): the model's weights, the blocks,
    the settings and the simulation code."""
    digest = hashlib.sha256()
    for name, t in [*digital.state_dict().items(), ("batches", batches),
                    *([("calib_batches", calib_batches)] if calib_batches is not None else [])]:
        _tensor_digest(digest, name, t)
    digest.update(json.dumps({**numbers, "device": device_fingerprint(numbers["device"]), "engine": code_fingerprint()},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _prepare_folder(out_dir: Path, identity: str, resume: bool) -> None:
    """Keep the rows of the same diagnosis (unless not ``resume``); rows of another are discarded,
    as a rerun of ``diagnose`` always replaced its folder's outputs."""
    path = out_dir / "settings.json"
    saved = None
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = None
    if not resume or not isinstance(saved, dict) or saved.get("fingerprint") != identity:
        clear_rows(out_dir)
    atomic_write_text(path, json.dumps({"fingerprint": identity}, indent=2))


@torch.no_grad()
def diagnose(
    model: nn.Module,
    device="pcm",
    batches=None,
    seeds: int | list[int] = 3,
    calib_batches=None,
    t_inference: float | None = None,
    analog_attention: bool = False,
    stress: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    out_dir: str | os.PathLike | None = None,
    about: Mapping[str, Any] | None = None,
    resume: bool = True,
    force: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    on_row: Callable[[DiagnosisRow], Any] | None = None,
) -> Diagnosis:
    """The analog error budget of ``model`` on ``device``: by component and by non-ideality, per layer.

    Args:
        model: A digital (unconverted) MoE model; it is not modified (converted copies are used).
        device: A preset name, a YAML path or a :class:`~romer_aihwkit.devices.DeviceConfig`.
        batches: Evaluation token blocks (as :func:`romer_aihwkit.perplexity` takes).
        seeds: Number of chip instances (seeds 0..n-1) or the seeds themselves.
        calib_batches: Blocks for the per-layer statistics; ``None``: the evaluation blocks (in the
            full configuration's perplexity pass).
        t_inference: Drift time in seconds (default: the device's).
        analog_attention: Put attention on tiles too (adds the ``attention`` component).
        stress: A stress spec applied to a copy of the model first (:func:`romer_aihwkit.stress.apply_stress`).
        batch_size: Blocks per forward.
        progress: Print one line per configuration.
        out_dir: A folder to write into: ``rows.jsonl`` as the rows finish (a rerun with the same
            model, blocks and settings resumes), then ``diagnosis.json``, ``report.md`` and the
            plots. The folder is locked for the run. ``None``: nothing is written.
        about: Descriptive settings recorded after the measured ones (model name, texts).
        resume: Reuse the folder's finished rows of the same diagnosis.
        force: Take over a folder of another kind (:func:`romer_aihwkit.outputs.output_folder`).
        rank, world_size: This process's share of the chip instances (default: the launcher's).
        on_row: Called with each new :class:`DiagnosisRow`.

    Returns:
        The :class:`~romer_aihwkit.evaluation.diagnosis_report.Diagnosis`: ``settings``,
        ``digital_ppl``, ``budget`` (rows), ``layers`` (per MoE layer), ``reading`` (lines),
        ``seconds``; ``to_dict()`` is ``diagnosis.json``.

    Raises:
        InputError: No evaluation batches, no seeds, a seed that is not an integer or is given twice
            (one chip instance would count several times), or a bad stress spec.
        ResultsLockedError: Another run holds ``out_dir``.
    """
    if batches is None:
        raise InputError("diagnose needs evaluation batches (token blocks)")
    if isinstance(seeds, (list, tuple)):
        seed_list = check_seeds(seeds, "diagnose seeds")
    else:
        seed_list = list(range(check_seed(seeds, "diagnose seeds (a count)")))
    if not seed_list:
        raise InputError("diagnose needs at least one seed (chip instance)")
    ctx = process(rank, world_size)
    run = _Diagnosis(model, device, batches, seed_list, calib_batches, t_inference, analog_attention, stress,
                     batch_size, progress)
    if out_dir is None:
        return run.result(ChipLoop(None, ctx, DiagnosisRow.from_dict), on_row, about)
    with chip_folder(out_dir, "diagnose", force, ctx) as folder:
        if ctx.is_main:
            _prepare_folder(folder, run.identity(), resume)
        ctx.wait_for_everyone()
        result = run.result(ChipLoop(folder, ctx, DiagnosisRow.from_dict), on_row, about)
        if ctx.is_main:
            write_diagnosis(result, folder)
        ctx.wait_for_everyone()
        return result


class _Diagnosis:
    """The settings of one diagnosis and its rows: convert per setup, program per chip instance, measure."""

    def __init__(self, model: nn.Module, device: Any, batches: torch.Tensor, seeds: list[int],
                 calib_batches: torch.Tensor | None, t_inference: float | None, analog_attention: bool,
                 stress: str | None, batch_size: int, progress: bool) -> None:
        self.start = time.perf_counter()
        resolved = resolve_device(device, (t_inference,))  # one meaning of the drift time: None is the device's
        self.config, self.t = resolved.config, resolved.t_inference[0]
        self.stress = stress_label(stress)
        self.digital = copy.deepcopy(model) if self.stress != "none" else model
        self.stress_report = apply_stress(self.digital, stress) if self.stress != "none" else None
        self.digital.eval()
        self.batches, self.calib_batches, self.seeds = batches, calib_batches, seeds
        self.analog_attention, self.batch_size, self.progress = analog_attention, batch_size, progress
        self.components = ["router", "expert"]
        if any(any(getattr(b, a, None) is not None for a in ad.shared_expert_attrs)
               for _, b, ad in find_moe_blocks(self.digital)):
            self.components.append("shared_expert")
        if analog_attention:
            self.components.append("attention")
        self.nonideal = nonidealities_of(self.config)
        self.setups = _setups(self.components, self.nonideal)

    def identity(self) -> str:
        return _identity(self.digital, self.batches, self.calib_batches, {
            "device": self.config, "t_inference": self.t, "components": self.components,
            "nonidealities": self.nonideal, "stress": self.stress, "batch_size": self.batch_size})

    def result(self, loop: ChipLoop[DiagnosisRow], on_row: Callable[[DiagnosisRow], Any] | None,
               about: Mapping[str, Any] | None) -> Diagnosis:
        digital_ppl = perplexity(self.digital, self.batches, batch_size=self.batch_size, progress=False)
        mine = shard(self.seeds, loop.ctx.rank, loop.ctx.world_size)
        for setup in self.setups:
            keys = [(setup.kind, setup.component, setup.nonideality, s) for s in mine]
            if loop.todo(keys):
                amodel = _convert(self.digital, _device_for(self.config, setup.on, self.nonideal), setup.analog,
                                  self.components, self.analog_attention)
                loop.run(keys, functools.partial(self._row, amodel, setup), on_row)
                del amodel
            if self.progress:
                done = {r.key: r.ppl for r in loop.rows()}
                ppls = [done[k] for k in keys]
                print(f"diagnose {setup.label}: ppl {_ci(ppls)['mean']:.3f} (digital {digital_ppl:.3f})", flush=True)
        loop.wait()
        rows = {r.key: r for r in loop.rows()}
        loop.done |= set(rows)  # the rows of the other processes
        loop.require((s.kind, s.component, s.nonideality, seed) for s in self.setups for seed in self.seeds)
        return self._assemble(rows, digital_ppl, about)

    def _row(self, amodel: AnalogMoEModel, setup: _Setup, key: tuple) -> DiagnosisRow:
        """Program ``amodel`` as chip instance ``key[3]`` and measure ``setup``'s row."""
        seed = int(key[3])
        amodel.program_analog_weights(seed=seed, t_inference=self.t)
        torch.manual_seed(matrix_seed(int(seed), f"diagnose|{setup.label}", "forward"))
        if setup.kind != "full":
            ppl = perplexity(amodel, self.batches, batch_size=self.batch_size, progress=False)
            return DiagnosisRow(setup.kind, setup.component, setup.nonideality, seed, ppl)
        if self.calib_batches is None:
            stats_ppl, stats = layer_statistics(amodel, self.batches, self.batch_size, with_ppl=True)
            if stats_ppl is None:
                raise RuntimeError("the statistics pass returned no perplexity")
            ppl = stats_ppl
        else:
            ppl = perplexity(amodel, self.batches, batch_size=self.batch_size, progress=False)
            _, stats = layer_statistics(amodel, self.calib_batches, self.batch_size, with_ppl=False)
        weights = tuple({"name": r.name, "experts": r.num_experts, **crest}
                        for r, crest in zip(find_routers(amodel), weight_crest(amodel)))
        return DiagnosisRow(setup.kind, setup.component, setup.nonideality, seed, ppl, tuple(stats), weights)

    def _assemble(self, rows: dict[tuple, DiagnosisRow], digital_ppl: float,
                  about: Mapping[str, Any] | None) -> Diagnosis:
        per_setup = {s: {seed: rows[(s.kind, s.component, s.nonideality, seed)] for seed in self.seeds}
                     for s in self.setups}
        full = per_setup[self.setups[0]]
        budget = []
        for setup, by_seed in per_setup.items():
            per_seed = {seed: r.ppl for seed, r in by_seed.items()}
            budget.append({
                "kind": setup.kind, "component": setup.component, "nonideality": setup.nonideality,
                "analog": sorted(setup.analog), "on": sorted(setup.on),
                "ppl": _ci(list(per_seed.values())),
                "delta_ppl": _ci([p - digital_ppl for p in per_seed.values()]),
                "removed": _ci([full[s].ppl - p for s, p in per_seed.items()]) if setup.kind != "full" else None,
                "per_seed": {str(s): p for s, p in per_seed.items()}})
        settings: dict[str, Any] = {
            "device": self.config.name, "t_inference": self.t, "seeds": self.seeds, "components": self.components,
            "nonidealities": self.nonideal, "analog_attention": self.analog_attention, "stress": self.stress,
            "stress_channels": self.stress_report["parts"] if self.stress_report else [],
            "statistics_on": "evaluation blocks" if self.calib_batches is None else "calibration blocks",
            "outlier_ratio": OUTLIER_RATIO}
        settings.update(about or {})
        result: dict[str, Any] = {"settings": settings, "digital_ppl": digital_ppl, "budget": budget,
                                  "layers": _merge_layers([full[s] for s in self.seeds])}
        return Diagnosis(settings, digital_ppl, budget, result["layers"], reading(result),
                         time.perf_counter() - self.start)


def _merge_layers(full: list[DiagnosisRow]) -> list[dict[str, Any]]:
    """Per MoE layer: the weight statistics, and the probe statistics averaged over chip instances."""
    weights, seed_layers = full[0].weights or (), [r.layers or () for r in full]
    out = []
    for i, w in enumerate(weights):
        entry: dict[str, Any] = {"layer": i, **w}
        for key in seed_layers[0][i]:
            values = [float(s[i][key]) for s in seed_layers]
            entry[key] = sum(values) / len(values)
            if key in ("router_logit_error", "router_fidelity", "load_shift") and len(values) > 1:
                entry[f"{key}_ci95"] = mean_std_ci(values)["ci95"]
        out.append(entry)
    return out
