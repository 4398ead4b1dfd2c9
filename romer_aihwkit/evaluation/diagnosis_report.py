"""A diagnosis as a record, and its text: the ranked reading, ``report.md`` and the folder's files.

:class:`Diagnosis` is what :func:`romer_aihwkit.experiments.diagnose.diagnose` returns; its
``to_dict()`` is ``diagnosis.json`` (and :meth:`Diagnosis.from_dict` reads one back, byte for byte).
:func:`reading` ranks what dominates the analog cost and names the method that targets it;
:func:`render_diagnosis` renders ``report.md``; :func:`write_diagnosis` writes ``diagnosis.json``,
``report.md`` and the plots (:mod:`.diagnosis_plots`). They take a :class:`Diagnosis` or
``diagnosis.json``'s dict, so a committed diagnosis folder re-renders from its ``diagnosis.json`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..deprecation import deprecated_item
from .diagnosis_plots import LAYER_COLUMNS, plot_diagnosis
from .probes import OUTLIER_RATIO

__all__ = ["DIAGNOSIS_FILES", "LAYER_COLUMNS", "NONIDEALITY_DOC", "Diagnosis", "fmt_ci", "reading", "render_diagnosis",
           "write_diagnosis"]

DIAGNOSIS_FILES = ("diagnosis.json", "report.md", "layers_heatmap.png", "budget.png")
"""The files :func:`write_diagnosis` writes, in order (besides the rows a run appends, ``rows.jsonl``)."""
NONIDEALITY_DOC = {
    "programming": "programming noise (conductance spread at programming)",
    "drift": "conductance drift to t_inference, with the device's drift compensation",
    "read": "accumulated 1/f read noise up to t_inference",
    "periphery": "DAC/ADC quantisation and clipping + additive output noise",
    "mvm-read": "per-MVM weight read noise (and input noise), resampled every token",
    "ir-drop": "IR drop, series resistance and output non-linearity (deterministic, input dependent)",
}
"""What each non-ideality of the budget stands for (the report's legend)."""


_KEYS = ("settings", "digital_ppl", "budget", "layers", "reading", "seconds")


@dataclass(frozen=True)
class Diagnosis:
    """The error budget of a model on a device (``diagnosis.json``).

    ``budget`` rows: ``kind`` (full/alone/off/floor), ``component``, ``nonideality``, ``analog``,
    ``on``, ``ppl`` / ``delta_ppl`` (vs digital) / ``removed`` (full - this, per chip instance),
    each ``{"mean", "ci95"}``, and ``per_seed`` perplexities. ``layers``: per MoE layer, the
    measurements of :mod:`romer_aihwkit.evaluation.probes` averaged over chip instances.
    """

    settings: dict[str, Any]
    digital_ppl: float
    budget: list[dict[str, Any]]
    layers: list[dict[str, Any]] | None
    reading: list[str]
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this package does not know, kept as they are."""

    def row(self, kind: str, component: str = "all", nonideality: str = "all") -> dict[str, Any]:
        """The budget row of one configuration (``KeyError`` if the budget has none)."""
        for r in self.budget:
            if (r["kind"], r["component"], r["nonideality"]) == (kind, component, nonideality):
                return r
        raise KeyError((kind, component, nonideality))

    def to_dict(self) -> dict[str, Any]:
        """``diagnosis.json``'s content."""
        out = {"settings": self.settings, "digital_ppl": self.digital_ppl, "budget": self.budget,
               "layers": self.layers, "reading": self.reading}
        if self.seconds is not None:
            out["seconds"] = self.seconds
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnosis:
        """Read ``diagnosis.json``'s content (``reading`` is recomputed when absent)."""
        lines = data.get("reading")
        return cls(dict(data["settings"]), data["digital_ppl"], list(data["budget"]), data.get("layers"),
                   reading(data) if lines is None else list(lines), data.get("seconds"),
                   {k: v for k, v in data.items() if k not in _KEYS})

    @classmethod
    def coerce(cls, result: Diagnosis | Mapping[str, Any]) -> Diagnosis:
        return result if isinstance(result, Diagnosis) else cls.from_dict(result)

    def __getitem__(self, key: str) -> Any:
        """``result["reading"]`` etc.: ``diagnosis.json``'s entry (deprecated; use the attributes)."""
        return deprecated_item(self, "diagnosis", key, "diagnose returns a Diagnosis", "diagnosis.json's content")


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


def reading(diagnosis: Diagnosis | Mapping[str, Any]) -> list[str]:
    """A short ranked reading of a diagnosis: what dominates, which method targets it."""
    result = _plain(diagnosis)
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


def fmt_ci(d: dict[str, float] | None, digits: int = 2, sign: bool = False) -> str:
    if d is None:
        return "–"
    mean = f"{d['mean']:+.{digits}f}" if sign else f"{d['mean']:.{digits}f}"
    return mean if d["ci95"] != d["ci95"] else f"{mean} ± {d['ci95']:.{digits}f}"


def _plain(result: Diagnosis | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.to_dict() if isinstance(result, Diagnosis) else result


def render_diagnosis(diagnosis: Diagnosis | Mapping[str, Any], plots: Sequence[Path] = (),
                     base_dir: Path | None = None) -> str:
    """``report.md`` of a diagnosis."""
    result = _plain(diagnosis)
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
        lines.append(f"| {r['kind']} | {r['component']} | {r['nonideality']} | {fmt_ci(r['ppl'])} | "
                     f"{fmt_ci(r['delta_ppl'], sign=True)} | {fmt_ci(r['removed'], sign=True)} |")
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


def write_diagnosis(diagnosis: Diagnosis | Mapping[str, Any], out_dir) -> list[Path]:
    """Write ``diagnosis.json``, ``report.md`` and the plots to ``out_dir``; returns the files."""
    result = _plain(diagnosis)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_diagnosis(result, out_dir)
    atomic_write_text(out_dir / "diagnosis.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "report.md", render_diagnosis(result, plots, out_dir))
    return [out_dir / "diagnosis.json", out_dir / "report.md", *plots]
