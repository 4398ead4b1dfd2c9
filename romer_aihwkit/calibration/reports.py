"""Typed reports of the calibration callbacks: ROMER (and ``RomerAuto``) and ``router-align``.

A callback's :meth:`~romer_aihwkit.calibration.CalibrationCallback.finish` returns a report that
satisfies :class:`CallbackReport` (``to_dict()`` gives the JSON-able dict a calibration writes) or,
for user callbacks, a plain JSON-able dict. ``to_dict()`` of the typed reports is exactly the dict
these callbacks returned before they were typed (same keys, order and values), so a file written
from it is byte-identical; :meth:`from_dict` reads it back (keys absent from an older report stay
absent, keys this package does not know are kept in ``extra``). Indexing a typed report like the
former dict (``report["romer"]["summary"]``) still works and warns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..deprecation import deprecated_item

__all__ = ["CallbackReport", "ReplicaPair", "RomerLayer", "RomerReport", "RouterAlignLayer", "RouterAlignReport",
           "report_from_dict"]


@runtime_checkable
class CallbackReport(Protocol):
    """What a calibration callback reports: anything with ``to_dict()`` (the JSON-able dict written)."""

    def to_dict(self) -> dict[str, Any]: ...


def _extra(data: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def _optional_tuple(data: Mapping[str, Any], key: str) -> tuple | None:
    return tuple(data[key]) if key in data else None


class ReplicaPair(NamedTuple):
    """One expert replacement: the ``cold`` expert's tile now holds a replica of the ``hot`` expert."""

    cold: int
    hot: int


_ROMER_LAYER_KEYS = ("layer", "name", "tokens", "scale", "bias", "normalized_load", "threshold", "replaced",
                     "masked_share", "expert_max_output", "super_experts", "before", "after")


@dataclass(frozen=True)
class RomerLayer:
    """What ROMER did on one MoE layer (definitions in docs/romer.md)."""

    layer: int
    name: str
    tokens: int
    """Calibration tokens the layer's router saw."""
    scale: tuple[float, ...]
    """Per-expert logit scale of the percentile normalization (ones without normalization)."""
    bias: tuple[float, ...]
    normalized_load: tuple[float, ...]
    """Per-expert load after normalization, before replacement (what ``threshold`` is compared to)."""
    threshold: float
    """``tau / E``: an expert below it is under-activated."""
    replaced: tuple[ReplicaPair, ...]
    before: dict[str, Any]
    """Routing metrics before calibration (``load``, ``load_cv``, ``max_load_ratio``, ``load_entropy``,
    ``router_fidelity``, ``router_fidelity_stream``) on the calibration tokens."""
    after: dict[str, Any]
    """The same after normalization and replacement."""
    masked_share: float | None = None
    """Share of the layer's experts masked by replacement (``None``: absent from an older report)."""
    expert_max_output: tuple[float, ...] | None = None
    """Per expert, max |digital output| on the sampled calibration hidden states (super-expert guard)."""
    super_experts: tuple[dict[str, Any], ...] | None = None
    """Experts the guard kept from being replaced (``expert``, ``max_abs_output``, ``ratio_to_median``)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer, "name": self.name, "tokens": self.tokens, "scale": list(self.scale),
            "bias": list(self.bias), "normalized_load": list(self.normalized_load), "threshold": self.threshold,
            "replaced": [{"cold": p.cold, "hot": p.hot} for p in self.replaced]}
        if self.masked_share is not None:
            out["masked_share"] = self.masked_share
        if self.expert_max_output is not None:
            out["expert_max_output"] = list(self.expert_max_output)
        if self.super_experts is not None:
            out["super_experts"] = [dict(s) for s in self.super_experts]
        out.update({"before": dict(self.before), "after": dict(self.after)})
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RomerLayer:
        supers = data.get("super_experts")
        return cls(data["layer"], data["name"], data["tokens"], tuple(data["scale"]), tuple(data["bias"]),
                   tuple(data["normalized_load"]), data["threshold"],
                   tuple(ReplicaPair(p["cold"], p["hot"]) for p in data["replaced"]), dict(data["before"]),
                   dict(data["after"]), data.get("masked_share"), _optional_tuple(data, "expert_max_output"),
                   None if supers is None else tuple(dict(s) for s in supers), _extra(data, _ROMER_LAYER_KEYS))

    def __getitem__(self, key: str) -> Any:
        """``layer["replaced"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "layer", key, "ROMER's layers are RomerLayer records", "the layer's dict")


_ROMER_KEYS = ("settings", "replaced_experts", "masked_share", "super_experts", "summary", "layers", "selection",
               "sequential")


@dataclass(frozen=True)
class RomerReport:
    """What :class:`~romer_aihwkit.calibration.Romer` (and ``RomerAuto``) installed, over all MoE layers."""

    settings: dict[str, Any]
    """The callback's settings (percentiles, tau, replacement, normalize, capacity, guard, budget)."""
    replaced_experts: int
    """Experts replaced, all layers together."""
    summary: dict[str, dict[str, float]]
    """``{metric: {"before", "after"}}`` for ``load_cv``, ``max_load_ratio``, ``router_fidelity``
    (means over layers, on the calibration tokens)."""
    layers: tuple[RomerLayer, ...]
    masked_share: tuple[float, ...] | None = None
    """Per layer, the share of its experts masked (``None``: absent from an older report)."""
    super_experts: tuple[dict[str, Any], ...] | None = None
    """Every layer's super experts, each with its ``layer``."""
    selection: Any = None
    """``RomerAuto``'s choice (``percentiles``, ``tau``, ``holdout_nll``, ``holdout_batches``, ``trials``);
    a list of one choice per layer after sequential calibration; ``None`` for ``Romer``."""
    sequential: bool | None = None
    """``True`` when calibrated layer by layer (the per-layer reports merged); ``None`` otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict ``Romer.finish`` returned before it was typed (same keys, order and values)."""
        out: dict[str, Any] = {"settings": dict(self.settings), "replaced_experts": self.replaced_experts}
        if self.masked_share is not None:
            out["masked_share"] = list(self.masked_share)
        if self.super_experts is not None:
            out["super_experts"] = [dict(s) for s in self.super_experts]
        out["summary"] = {k: dict(v) for k, v in self.summary.items()}
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.selection is not None:
            out["selection"] = self.selection
        if self.sequential is not None:
            out["sequential"] = self.sequential
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RomerReport:
        supers = data.get("super_experts")
        return cls(dict(data["settings"]), data["replaced_experts"], {k: dict(v) for k, v in data["summary"].items()},
                   tuple(RomerLayer.from_dict(layer) for layer in data["layers"]), _optional_tuple(data, "masked_share"),
                   None if supers is None else tuple(dict(s) for s in supers), data.get("selection"),
                   data.get("sequential"), _extra(data, _ROMER_KEYS))

    def __getitem__(self, key: str) -> Any:
        """``report["romer"]["summary"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "romer", key, "ROMER reports a RomerReport", "the report's dict")


_ALIGN_LAYER_KEYS = ("layer", "name", "tokens", "holdout_agreement_before", "holdout_agreement_after",
                     "holdout_loss_before", "holdout_loss_after", "kept")


@dataclass(frozen=True)
class RouterAlignLayer:
    """What ``router-align`` did on one MoE layer: the held-out top-k agreement and loss before and after."""

    layer: int
    name: str
    tokens: int
    holdout_agreement_before: float
    holdout_agreement_after: float
    holdout_loss_before: float
    holdout_loss_after: float
    kept: bool
    """Whether the fitted correction was installed (it is reverted when held-out agreement drops)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "name": self.name, "tokens": self.tokens,
                "holdout_agreement_before": self.holdout_agreement_before,
                "holdout_agreement_after": self.holdout_agreement_after,
                "holdout_loss_before": self.holdout_loss_before, "holdout_loss_after": self.holdout_loss_after,
                "kept": self.kept, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterAlignLayer:
        return cls(data["layer"], data["name"], data["tokens"], data["holdout_agreement_before"],
                   data["holdout_agreement_after"], data["holdout_loss_before"], data["holdout_loss_after"],
                   data["kept"], _extra(data, _ALIGN_LAYER_KEYS))

    def __getitem__(self, key: str) -> Any:
        """``layer["kept"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "layer", key, "router-align's layers are RouterAlignLayer records",
                               "the layer's dict")


_ALIGN_KEYS = ("layers", "digital_parameters", "settings", "sequential")


@dataclass(frozen=True)
class RouterAlignReport:
    """What :class:`~romer_aihwkit.calibration.RouterAlign` installed, over all MoE layers."""

    layers: tuple[RouterAlignLayer, ...]
    digital_parameters: int
    """The digital correction parameters it adds (``2 E`` per layer)."""
    settings: dict[str, Any]
    sequential: bool | None = None
    """``True`` when calibrated layer by layer; ``None`` otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict ``RouterAlign.finish`` returned before it was typed."""
        out: dict[str, Any] = {"layers": [layer.to_dict() for layer in self.layers],
                               "digital_parameters": self.digital_parameters, "settings": dict(self.settings)}
        if self.sequential is not None:
            out["sequential"] = self.sequential
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterAlignReport:
        return cls(tuple(RouterAlignLayer.from_dict(layer) for layer in data["layers"]), data["digital_parameters"],
                   dict(data["settings"]), data.get("sequential"), _extra(data, _ALIGN_KEYS))

    def __getitem__(self, key: str) -> Any:
        """``report["router-align"]["layers"]`` etc. (deprecated; use the attributes)."""
        return deprecated_item(self, "router_align", key, "router-align reports a RouterAlignReport",
                               "the report's dict")


_TYPES: dict[str, tuple[type[RomerReport] | type[RouterAlignReport], tuple[str, ...]]] = {
    **{name: (RomerReport, ("settings", "replaced_experts", "summary", "layers"))
       for name in ("romer", "romer-norm", "romer-replace", "romer-auto")},
    "router-align": (RouterAlignReport, ("layers", "digital_parameters", "settings")),
}
"""The package's callbacks (by name) and the keys their report must have to be read as typed."""


def report_from_dict(name: str, data: Any) -> CallbackReport | Any:
    """A callback's report read back from its JSON form: typed for the package's callbacks (``name``,
    or ``name#i`` when a calibration ran it twice), left as it is for any other callback."""
    known = _TYPES.get(name.split("#")[0])
    if known is None or not isinstance(data, Mapping) or not all(k in data for k in known[1]):
        return data
    return known[0].from_dict(data)
