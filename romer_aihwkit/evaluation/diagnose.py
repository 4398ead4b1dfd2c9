"""Where does the analog error come from? An error budget by component x non-ideality, per layer.

:func:`diagnose` converts the model several times, each time with one part of the simulation on
alone or one part off, programs the same chip instances (seeds) and measures perplexity:

* **components** (which matrices are on analog tiles): ``router``, ``expert``, ``shared_expert``
  (families that have them), ``attention`` (only with ``analog_attention``). A component that is
  "off" is kept digital: routers and attention/shared-expert matrices are swapped for digital
  matrices after conversion, routed experts are converted with ``digital_experts`` = all.
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

Per MoE layer (from the full configuration, on the statistics batches): weight crest factors
(per-row max/RMS of the router and expert matrices: AIHWKit maps each output row onto its own
conductance range), activation crest factors of the router/expert input (per-token max/RMS: what
per-token abs-max input scaling divides by), outlier channels (channel RMS above 6x the median
channel), the router's relative logit error and how much of it a per-expert affine map cannot
remove (the per-token part ROMER's normalization cannot correct), router fidelity and load shift
(total-variation distance between noisy and digital expert loads).

Cost: ``(2 + 2 C + 2 N)`` conversions and ``(2 + 2 C + 2 N) x seeds`` programming passes plus
perplexity passes over the evaluation blocks (C components, N non-idealities; e.g. 14 x 3 for an
OLMoE model on ``pcm``), and one digital pass.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analog.model import AnalogMoEModel
from ..errors import InputError
from .stats import mean_std_ci

__all__ = ["COMPONENTS", "NONIDEALITIES", "OUTLIER_RATIO", "diagnose", "nonidealities_of", "write_diagnosis"]

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
NONIDEALITY_DOC = {
    "programming": "programming noise (conductance spread at programming)",
    "drift": "conductance drift to t_inference, with the device's drift compensation",
    "read": "accumulated 1/f read noise up to t_inference",
    "periphery": "DAC/ADC quantisation and clipping + additive output noise",
    "mvm-read": "per-MVM weight read noise (and input noise), resampled every token",
    "ir-drop": "IR drop, series resistance and output non-linearity (deterministic, input dependent)",
}
OUTLIER_RATIO = 6.0
"""A hidden channel is an outlier channel when its RMS exceeds this many times the median channel RMS."""
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


def _swap_digital(model: nn.Module, roles: set[str]) -> None:
    """Replace every analog matrix of ``roles`` (router, shared_expert, attention) by a digital one."""
    from ..analog.matrix import DigitalMatrix, WeightMatrix

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WeightMatrix) and child.is_analog and child.role in roles:
                bias = child.bias.detach() if child.bias is not None else None
                setattr(parent, name, DigitalMatrix(child.weight.detach().float(), bias, child.role, child.matrix_name)
                        .to(child.weight.device))


def _convert(digital: nn.Module, config, setup: _Setup, components: list[str], analog_attention: bool) -> AnalogMoEModel:
    from ..analog import convert_to_analog_moe
    from ..analog.convert import _find_blocks

    model = copy.deepcopy(digital)
    digital_experts = None
    if "expert" in components and "expert" not in setup.analog:
        digital_experts = {i: list(range(a.num_experts(b))) for i, (_, b, a) in enumerate(_find_blocks(model))}
    model = convert_to_analog_moe(model, config, analog_attention=analog_attention, digital_experts=digital_experts)
    _swap_digital(model, {c for c in ("router", "shared_expert", "attention") if c not in setup.analog})
    return model


# ------------------------------------------------------------------ per-layer statistics
def _row_crest(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().reshape(w.shape[0], -1)
    return w.abs().amax(1) / w.pow(2).mean(1).sqrt().clamp_min(1e-30)


def weight_crest(model: nn.Module) -> list[dict[str, float]]:
    """Per MoE layer: mean and max per-row crest factor (max/RMS) of router, expert gate/up and down rows."""
    from ..analog.trace import experts_of, find_routers

    out = []
    for router in find_routers(model):
        experts = experts_of(model, router)
        rc = _row_crest(router.weight)
        gu, dn = zip(*(experts.own_weights(e) for e in range(experts.num_experts)))
        gc = torch.cat([_row_crest(w) for w in gu])
        dc = torch.cat([_row_crest(w) for w in dn])
        out.append({"router_weight_crest": float(rc.mean()), "router_weight_crest_max": float(rc.max()),
                    "expert_weight_crest": float(torch.cat([gc, dc]).mean()),
                    "expert_weight_crest_max": float(torch.cat([gc, dc]).max())})
    return out


class _LayerProbe:
    """Router-input activation statistics and router logit error per MoE layer (an observer)."""

    def __init__(self, routers: list) -> None:
        self.index = {id(r): i for i, r in enumerate(routers)}
        n = len(routers)
        self.tokens = [0] * n
        self.crest_sum = [0.0] * n
        self.crest_max = [0.0] * n
        self.chan_sq: list[torch.Tensor | None] = [None] * n
        self.err_sq = [0.0] * n
        self.ref_sq = [0.0] * n
        self.moments: list[torch.Tensor | None] = [None] * n  # per expert: n, sum z~, sum z, sum z~^2, sum z~ z, sum z^2, sum (z - z~)^2

    def __call__(self, event) -> None:
        i = self.index[id(event.router)]
        h = event.hidden.float()
        rms = h.pow(2).mean(1).sqrt().clamp_min(1e-30)
        crest = h.abs().amax(1) / rms
        self.tokens[i] += h.shape[0]
        self.crest_sum[i] += float(crest.sum())
        self.crest_max[i] = max(self.crest_max[i], float(crest.max()))
        sq = h.pow(2).sum(0).double().cpu()
        prev_sq = self.chan_sq[i]
        self.chan_sq[i] = sq if prev_sq is None else prev_sq + sq
        noisy, ref = event.noisy_logits.double().cpu(), event.reference_logits.double().cpu()
        self.err_sq[i] += float((noisy - ref).pow(2).sum())
        self.ref_sq[i] += float(ref.pow(2).sum())
        m = torch.stack([torch.full_like(noisy[0], noisy.shape[0]), noisy.sum(0), ref.sum(0), noisy.pow(2).sum(0),
                         (noisy * ref).sum(0), ref.pow(2).sum(0), (ref - noisy).pow(2).sum(0)])
        prev = self.moments[i]
        self.moments[i] = m if prev is None else prev + m

    def result(self, i: int) -> dict[str, float]:
        chan_sq, moments = self.chan_sq[i], self.moments[i]
        if chan_sq is None or moments is None:
            raise RuntimeError(f"no router forward was observed for MoE layer {i}")
        chan_rms = (chan_sq / max(self.tokens[i], 1)).sqrt()
        median = float(chan_rms.median().clamp_min(1e-30))
        n, sn, sr, snn, snr, srr, raw = moments
        var_n = (snn - sn * sn / n).clamp_min(1e-30)
        cov = snr - sn * sr / n
        var_r = srr - sr * sr / n
        residual = (var_r - cov * cov / var_n).clamp_min(0.0)  # error left after the best per-expert affine map
        return {
            "act_crest": self.crest_sum[i] / max(self.tokens[i], 1),
            "act_crest_max": self.crest_max[i],
            "outlier_channels": int((chan_rms > OUTLIER_RATIO * median).sum()),
            "max_channel_ratio": float(chan_rms.max()) / median,
            "router_logit_error": math.sqrt(self.err_sq[i] / max(self.ref_sq[i], 1e-30)),
            "router_error_per_token_share": float(residual.sum() / raw.sum().clamp_min(1e-30)),
        }


def _stats_pass(model: nn.Module, batches, batch_size: int, with_ppl: bool) -> tuple[float | None, list[dict[str, Any]]]:
    from ..analog.trace import find_routers, trace_routing
    from ..calibration.base import run_batches
    from .perplexity import token_nll
    from .routing import _accumulator

    probe = _LayerProbe(find_routers(model))
    acc = _accumulator(model)

    def both(event) -> None:
        probe(event)
        acc(event)

    ppl = None
    with trace_routing(model, both):
        if with_ppl:
            nll, count = token_nll(model, batches, batch_size=batch_size, progress=False)
            ppl = math.exp(nll / count)
        else:
            run_batches(model, batches, batch_size, progress=False)
    routing = acc.result()["layers"]
    layers = []
    for i, layer in enumerate(routing):
        load = torch.tensor(layer["load"], dtype=torch.float64)
        ref = torch.tensor(layer["reference_load"], dtype=torch.float64)
        layers.append({**probe.result(i), "router_fidelity": layer["router_fidelity"],
                       "load_shift": float(0.5 * (load - ref).abs().sum()),
                       "load_cv": layer["load_cv"], "reference_load_cv": layer["reference_load_cv"]})
    return ppl, layers


# ------------------------------------------------------------------ the budget
def _seed_forward(seed: int, label: str) -> None:
    from ..analog.matrix import matrix_seed

    torch.manual_seed(matrix_seed(int(seed), f"diagnose|{label}", "forward"))


def _ci(values: list[float]) -> dict[str, float]:
    st = mean_std_ci(values)
    return {"mean": st["mean"], "ci95": st["ci95"]}


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
) -> dict[str, Any]:
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

    Returns:
        ``{"settings", "digital_ppl", "budget": [rows], "layers": [per MoE layer], "reading": [lines],
        "seconds"}``. Budget rows: ``kind`` (full/alone/off/floor), ``component``, ``nonideality``,
        ``ppl`` / ``delta_ppl`` (vs digital) / ``removed`` (full - this, per chip instance), each
        ``{"mean", "ci95"}``, and ``per_seed`` perplexities.

    Raises:
        InputError: No evaluation batches, no seeds, a seed that is not an integer or is given twice
            (one chip instance would count several times), or a bad stress spec.
    """
    from ..analog.convert import _find_blocks
    from ..devices import load_device_config
    from ..stress import apply_stress, stress_label
    from .perplexity import perplexity

    if batches is None:
        raise InputError("diagnose needs evaluation batches (token blocks)")
    from ..validate import check_seed, check_seeds

    if isinstance(seeds, (list, tuple)):
        seed_list = check_seeds(seeds, "diagnose seeds")
    else:
        seed_list = list(range(check_seed(seeds, "diagnose seeds (a count)")))
    if not seed_list:
        raise InputError("diagnose needs at least one seed (chip instance)")
    start = time.perf_counter()
    config = load_device_config(device)
    t = config.check_t_inference(config.t_inference if t_inference is None else t_inference)
    digital = copy.deepcopy(model) if stress_label(stress) != "none" else model
    stress_report = apply_stress(digital, stress) if stress_label(stress) != "none" else None
    digital.eval()

    components = ["router", "expert"]
    if any(any(getattr(b, a, None) is not None for a in ad.shared_expert_attrs) for _, b, ad in _find_blocks(digital)):
        components.append("shared_expert")
    if analog_attention:
        components.append("attention")
    nonideal = nonidealities_of(config)
    digital_ppl = perplexity(digital, batches, batch_size=batch_size, progress=False)

    rows: list[dict[str, Any]] = []
    layers = None
    full_ppl: dict[int, float] = {}
    for setup in _setups(components, nonideal):
        label = f"{setup.kind}:{setup.component}:{setup.nonideality}"
        dev = _device_for(config, setup.on, nonideal)
        amodel = _convert(digital, dev, setup, components, analog_attention)
        per_seed: dict[int, float] = {}
        seed_layers = []
        for seed in seed_list:
            amodel.program_analog_weights(seed=seed, t_inference=t)
            _seed_forward(seed, label)
            if setup.kind == "full":
                if calib_batches is None:
                    stats_ppl, stats = _stats_pass(amodel, batches, batch_size, with_ppl=True)
                    if stats_ppl is None:
                        raise RuntimeError("the statistics pass returned no perplexity")
                    ppl = stats_ppl
                else:
                    ppl = perplexity(amodel, batches, batch_size=batch_size, progress=False)
                    _, stats = _stats_pass(amodel, calib_batches, batch_size, with_ppl=False)
                seed_layers.append(stats)
            else:
                ppl = perplexity(amodel, batches, batch_size=batch_size, progress=False)
            per_seed[seed] = ppl
        if setup.kind == "full":
            full_ppl = per_seed
            crest = weight_crest(amodel)
            layers = _merge_layers(seed_layers, crest, amodel)
        del amodel
        row: dict[str, Any] = {"kind": setup.kind, "component": setup.component, "nonideality": setup.nonideality,
               "analog": sorted(setup.analog), "on": sorted(setup.on),
               "ppl": _ci(list(per_seed.values())),
               "delta_ppl": _ci([p - digital_ppl for p in per_seed.values()]),
               "removed": _ci([full_ppl[s] - p for s, p in per_seed.items()]) if setup.kind != "full" else None,
               "per_seed": {str(s): p for s, p in per_seed.items()}}
        rows.append(row)
        if progress:
            print(f"diagnose {label}: ppl {row['ppl']['mean']:.3f} (digital {digital_ppl:.3f})", flush=True)
    result = {
        "settings": {"device": config.name, "t_inference": t, "seeds": seed_list, "components": components,
                     "nonidealities": nonideal, "analog_attention": analog_attention,
                     "stress": stress_label(stress), "stress_channels": stress_report["parts"] if stress_report else [],
                     "statistics_on": "evaluation blocks" if calib_batches is None else "calibration blocks",
                     "outlier_ratio": OUTLIER_RATIO},
        "digital_ppl": digital_ppl,
        "budget": rows,
        "layers": layers,
    }
    result["reading"] = reading(result)
    result["seconds"] = time.perf_counter() - start
    return result


def _merge_layers(seed_layers: list[list[dict[str, Any]]], crest: list[dict[str, float]], model) -> list[dict[str, Any]]:
    from ..analog.trace import find_routers

    routers = find_routers(model)
    out = []
    for i, router in enumerate(routers):
        entry: dict[str, Any] = {"layer": i, "name": router.name, "experts": router.num_experts, **crest[i]}
        for key in seed_layers[0][i]:
            values = [float(s[i][key]) for s in seed_layers]
            entry[key] = sum(values) / len(values)
            if key in ("router_logit_error", "router_fidelity", "load_shift") and len(values) > 1:
                entry[f"{key}_ci95"] = mean_std_ci(values)["ci95"]
        out.append(entry)
    return out


# ------------------------------------------------------------------ the reading
_TARGETS = {
    "periphery": "8-bit DAC/ADC quantisation and output noise: analog-aware channel rescaling (`smooth`), static "
                 "input ranges (`input-range`), more converter bits, or hardware-aware training",
    "periphery+outliers": "outlier channels: per-token abs-max DAC scaling spends its levels on them; static input "
                          "ranges (`input-range`) clip them instead, which can be worse -- analog-aware channel "
                          "rescaling (`smooth`) moves them into the weights, which targets it",
    "programming": "hetero (`hetero`: keep the few most sensitive experts digital) for expert noise; ROMER / "
                   "`router-ensemble` / `digital-router` for router noise",
    "drift": "drift compensation (`global`, `per-column`)",
    "read": "averaging repeated reads (`router-ensemble` for the router)",
    "mvm-read": "per-token noise no calibration removes: averaging repeated reads (`router-ensemble` for the "
                "router), keeping the most sensitive matrices digital (`hetero`, `digital-router`), hardware-aware "
                "training",
    "ir-drop": "a deterministic, input-dependent gain loss: gain compensation (`global`, `per-column`) absorbs "
               "its mean; smaller tiles or lower conductances reduce it",
    "router": "ROMER (`romer`: per-expert logit distortion and load collapse) for systematic error; "
              "`router-ensemble` or `digital-router` for per-token noise",
    "expert": "`hetero` for a few fragile experts; ROMER replacement (`romer`) doubles the hottest experts' tiles",
    "shared_expert": "keeping the shared expert digital (it runs on every token)",
    "attention": "keeping attention digital (the default)",
}


def reading(result: dict[str, Any]) -> list[str]:
    """A short ranked reading of a diagnosis: what dominates, which method targets it."""
    rows = result["budget"]
    full = next(r for r in rows if r["kind"] == "full")
    cost = full["delta_ppl"]["mean"]
    digital = result["digital_ppl"]
    lines = [f"Analog cost: ppl {full['ppl']['mean']:.2f} vs digital {digital:.2f} "
             f"({100 * cost / digital:+.1f} %, ± {full['delta_ppl']['ci95']:.2f} over "
             f"{len(result['settings']['seeds'])} chip instances)."]
    floor = next((r for r in rows if r["kind"] == "floor"), None)
    if floor is not None:
        lines.append(f"With every modelled non-ideality off the analog model gives {floor['ppl']['mean']:.2f} "
                     "(mapping alone).")
    if not cost > 0:
        lines.append("No measurable cost to attribute.")
    for axis, key in (("nonideality", "nonideality"), ("component", "component")):
        alone = [r for r in rows if r["kind"] == "alone" and r[key] != "all"]
        if not alone or not cost > 0:
            continue
        ranked = sorted(alone, key=lambda r: -r["delta_ppl"]["mean"])
        parts = ", ".join(f"{r[key]} {r['delta_ppl']['mean']:+.2f} ({100 * r['delta_ppl']['mean'] / cost:.0f} %)"
                          for r in ranked)
        lines.append(f"By {axis}, each alone (share of the full cost): {parts}.")
        off = {r[key]: r for r in rows if r["kind"] == "off" and r[key] != "all"}
        top = ranked[0][key]
        if top in off:
            saved = off[top]["removed"]
            lines.append(f"Removing {top} alone saves {saved['mean']:+.2f} ± {saved['ci95']:.2f} ppl "
                         f"({100 * saved['mean'] / cost:.0f} % of the cost).")
        has_outliers = any(x["outlier_channels"] > 0 for x in result.get("layers") or [])
        target = _TARGETS["periphery+outliers" if top == "periphery" and has_outliers else top]
        lines.append(f"Dominant {axis}: **{top}** -> {target}.")
    layers = result.get("layers") or []
    if layers:
        worst = max(layers, key=lambda x: x["router_logit_error"])
        lines.append(f"Router: mean fidelity {sum(x['router_fidelity'] for x in layers) / len(layers):.3f}; "
                     f"worst logit error in layer {worst['layer']} ({worst['router_logit_error']:.3f}), of which "
                     f"{100 * worst['router_error_per_token_share']:.0f} % is per-token (a per-expert affine map "
                     "such as ROMER's normalization cannot remove it).")
        outliers = [x for x in layers if x["outlier_channels"] > 0]
        if outliers:
            lines.append(f"Outlier channels (RMS > {OUTLIER_RATIO:g}x median) in the router/expert input of "
                         f"{len(outliers)} of {len(layers)} MoE layers (up to {max(x['max_channel_ratio'] for x in layers):.0f}x): "
                         "per-token abs-max input scaling loses resolution on every other channel.")
    return lines


# ------------------------------------------------------------------ outputs
def _fmt_ci(d: dict[str, float] | None, digits: int = 2, sign: bool = False) -> str:
    if d is None:
        return "–"
    mean = f"{d['mean']:+.{digits}f}" if sign else f"{d['mean']:.{digits}f}"
    return mean if d["ci95"] != d["ci95"] else f"{mean} ± {d['ci95']:.{digits}f}"


LAYER_COLUMNS = ("router_weight_crest", "expert_weight_crest", "act_crest", "outlier_channels", "max_channel_ratio",
                 "router_logit_error", "router_error_per_token_share", "router_fidelity", "load_shift")


def render_diagnosis(result: dict[str, Any], plots: Sequence[Path] = (), base_dir: Path | None = None) -> str:
    """``report.md`` of a diagnosis."""
    s = result["settings"]
    title = f"{s.get('model', 'model')} · {s['device']} · t_inference {s['t_inference']:g} s · stress {s['stress']}"
    lines = [f"# Analog error diagnosis: {title}", "",
             f"{len(s['seeds'])} chip instances (seeds {', '.join(map(str, s['seeds']))}); digital perplexity "
             f"**{result['digital_ppl']:.3f}**; {result.get('seconds', 0):.0f} s.", "", "## Reading", ""]
    lines += [f"{i}. {line}" for i, line in enumerate(result["reading"], 1)]
    lines += ["", "## Error budget", "",
              "`alone`: only this part on; `off`: everything but this part; `removed` = full − off on the same chip "
              "instances. Mean ± 95 % CI.", "",
              "| kind | component | non-ideality | ppl | Δppl vs digital | removed (full − this) |",
              "|---|---|---|---:|---:|---:|"]
    for r in result["budget"]:
        lines.append(f"| {r['kind']} | {r['component']} | {r['nonideality']} | {_fmt_ci(r['ppl'])} | "
                     f"{_fmt_ci(r['delta_ppl'], sign=True)} | {_fmt_ci(r['removed'], sign=True)} |")
    lines += ["", "Non-idealities: " + "; ".join(f"`{n}` = {NONIDEALITY_DOC[n]}" for n in s["nonidealities"]) + ".",
              "", "## Per MoE layer", "", "| layer | " + " | ".join(LAYER_COLUMNS) + " |",
              "|---" * (len(LAYER_COLUMNS) + 1) + "|"]
    for x in result["layers"]:
        cells = [f"{x[c]:.0f}" if c == "outlier_channels" else f"{x[c]:.3f}" for c in LAYER_COLUMNS]
        lines.append(f"| {x['layer']} | " + " | ".join(cells) + " |")
    lines += ["", "Crest factors are max/RMS (per weight row; per token for activations, on the router/expert input); "
              f"outlier channels have RMS > {s['outlier_ratio']:g}x the median channel; `router_error_per_token_share` "
              "is the part of the router's squared logit error that the best per-expert affine map leaves; "
              "`load_shift` is the total-variation distance between noisy and digital expert loads.", ""]
    if s.get("stress_channels"):
        lines += [f"Stress `{s['stress']}` on hidden channels: " + "; ".join(
            f"{p['kind']} {p['channel_ids']}" for p in s["stress_channels"]), ""]
    for p in plots:
        rel = Path(p).relative_to(base_dir) if base_dir is not None else Path(p)
        lines += [f"![{Path(p).stem}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def plot_diagnosis(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The per-layer heatmap and the budget bar chart (PNG)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    s = result["settings"]
    title = f"{s.get('model', 'model')}, {s['device']}, t = {s['t_inference']:g} s, stress {s['stress']}"
    paths = []
    layers = result["layers"]
    data = torch.tensor([[float(x[c]) for c in LAYER_COLUMNS] for x in layers])
    span = (data.amax(0) - data.amin(0)).clamp_min(1e-12)
    norm = (data - data.amin(0)) / span
    fig, ax = plt.subplots(figsize=(1.3 * len(LAYER_COLUMNS) + 1.5, 0.5 * len(layers) + 1.8))
    ax.imshow(norm.numpy(), aspect="auto", cmap="viridis")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(LAYER_COLUMNS)))
    ax.set_xticklabels([c.replace("_", "\n") for c in LAYER_COLUMNS], fontsize=7)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([f"MoE layer {x['layer']}" for x in layers], fontsize=8)
    ax.set_title(f"Per-layer diagnosis (colour: per-column min-max) — {title}", fontsize=9)
    paths.append(_save(fig, out_dir / "layers_heatmap.png"))

    rows = [r for r in result["budget"] if r["kind"] in ("alone", "off")]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    labels = [f"{r['kind']}: {r['component'] if r['component'] != 'all' else r['nonideality']}" for r in rows]
    values = [r["delta_ppl"]["mean"] for r in rows]
    errs = [0.0 if r["delta_ppl"]["ci95"] != r["delta_ppl"]["ci95"] else r["delta_ppl"]["ci95"] for r in rows]
    ax.barh(range(len(rows)), values, xerr=errs, color=["#4c72b0" if r["kind"] == "alone" else "#dd8452" for r in rows])
    full = next(r for r in result["budget"] if r["kind"] == "full")["delta_ppl"]["mean"]
    ax.axvline(full, color="black", linestyle="--", linewidth=0.8, label="full analog")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ perplexity vs digital (mean ± 95 % CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"Error budget — {title}", fontsize=9)
    paths.append(_save(fig, out_dir / "budget.png"))
    return paths


def write_diagnosis(result: dict[str, Any], out_dir) -> list[Path]:
    """Write ``diagnosis.json``, ``report.md`` and the plots to ``out_dir``; returns the files."""
    import json

    from ..atomic import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_diagnosis(result, out_dir)
    atomic_write_text(out_dir / "diagnosis.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "report.md", render_diagnosis(result, plots, out_dir))
    return [out_dir / "diagnosis.json", out_dir / "report.md", *plots]
