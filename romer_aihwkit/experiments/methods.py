"""The comparison methods: each a named, composable setting applied to one chip instance.

A :class:`Method` says how to convert (device overrides, digital router, hetero experts) and what
to run after programming + drift on each chip instance (static input-range calibration,
calibration callbacks such as ROMER). Methods sharing a conversion share the same programming
noise for a given seed, because every matrix draws its noise from ``(seed, matrix name)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..adapters import find_moe_blocks
from ..analog import AnalogMoEModel, convert_to_analog_moe, default_placement
from ..analog.engines import warn_fallback
from ..baselines.hetero import hetero_placement, select_hetero_experts
from ..baselines.hwa import is_hwa_trained
from ..baselines.input_range import calibrate_static_input_ranges
from ..baselines.router_ensemble import install_router_ensemble
from ..baselines.smooth import smooth_model
from ..calibration import Romer, RomerAuto, RouterAlign, calibrate
from ..devices import load_device_config
from ..errors import InputError
from ..validate import check_finite_fields

__all__ = ["Method", "METHODS", "apply_method", "compose_methods", "digital_parameter_fraction", "get_method",
           "list_methods", "prepare_model", "register_method"]


def _romer(**kwargs) -> Callable[[], list]:
    def make() -> list:
        return [Romer(**kwargs)]

    return make


def _romer_auto() -> Callable[[], list]:
    def make() -> list:
        return [RomerAuto()]

    return make


def _router_align() -> list:
    return [RouterAlign()]


def _no_callbacks() -> list:
    return []


@dataclass(frozen=True)
class Method:
    """One setting of the comparison."""

    name: str
    description: str
    device_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the device config to override (e.g. ``{"drift_compensation": "per-column"}``)."""
    analog_router: bool = True
    hetero_fraction: float = 0.0
    """Fraction of experts per layer kept digital by maximum neuron norm (Chowdhury et al. 2026)."""
    static_input_ranges: bool = False
    """Calibrate static DAC input ranges from the calibration data (AIHWKit)."""
    callbacks: Callable[[], list] = _no_callbacks
    """Fresh calibration callbacks for one chip instance."""
    sequential_calibration: bool = False
    """Run the callbacks layer by layer (:func:`romer_aihwkit.calibrate` ``sequential=True``)."""
    router_copies: int = 1
    """Programmed tiles per router, logits averaged (:mod:`romer_aihwkit.baselines.router_ensemble`)."""
    hwa: bool = False
    """Convert a hardware-aware trained copy of the model (:mod:`romer_aihwkit.baselines.hwa`), trained
    for the device before conversion (the comparison runner trains and caches it)."""
    smooth: bool = False
    """Analog-aware channel rescaling of every norm -> MoE group before conversion
    (:func:`romer_aihwkit.baselines.smooth.smooth_model`), chosen for the device on the calibration data."""
    input_percentile: float | None = None
    """With ``static_input_ranges``: each tile's range is this percentile of the per-token abs-max
    of its inputs (:func:`~romer_aihwkit.baselines.input_range.calibrate_static_input_ranges`)
    instead of AIHWKit's entry quantile."""
    candidates: tuple[str, ...] = ()
    """A selection method (``best``): the methods it chooses from per model, device and drift time
    on held-out calibration blocks (:func:`romer_aihwkit.experiments.best.choose_method`)."""
    digital_budget: float | None = None
    """Of a selection method: the largest share of the MoE parameters a candidate may keep digital
    (:func:`digital_parameter_fraction`); ``None``: no limit."""

    def __post_init__(self) -> None:
        check_finite_fields(self, f"method {self.name!r}:")
        if not 0.0 <= self.hetero_fraction < 1.0:
            raise InputError(f"method {self.name!r}: hetero_fraction must be in [0, 1), got {self.hetero_fraction!r}")
        if isinstance(self.router_copies, bool) or not isinstance(self.router_copies, int) or self.router_copies < 1:
            raise InputError(f"method {self.name!r}: router_copies must be a positive integer, got {self.router_copies!r}")

    @property
    def needs_calibration_data(self) -> bool:
        return self.static_input_ranges or self.smooth or bool(self.candidates) or bool(self.callbacks())

    @property
    def edits_model(self) -> bool:
        """Whether the method changes the model itself, not only the chip it runs on.

        True for anything that edits weights, routing or masks (calibration callbacks such as
        ROMER's normalization and expert replacement or router-align's correction, the
        function-preserving rescaling of ``smooth``, hardware-aware training, weights clipped
        before programming, a selection that may choose any of these), and for the methods that
        change which parts are analog or how often they are programmed (hetero, router ensembles).
        False for settings of the chip alone (drift compensation, remapping, input ranges, a
        digital router), which on a noise-free chip are the digital model by construction.
        """
        clip = str(self.device_overrides.get("weight_clip", "none")).lower() not in ("none", "")
        return (bool(self.callbacks()) or self.hwa or self.hetero_fraction > 0 or self.router_copies > 1 or clip
                or self.smooth or bool(self.candidates))

    @property
    def engine(self) -> str:
        """The analog engine this method converts with: AIHWKit's static input-range calibration
        works on AIHWKit's own tiles (``"aihwkit"``), everything else on the stacked engine."""
        return "aihwkit" if self.static_input_ranges else "stacked"

    def conversion_key(self) -> tuple:
        """Methods with equal keys can share one converted model (everything conversion reads,
        including what picks the engine)."""
        return (tuple(sorted(self.device_overrides.items(), key=str)), self.analog_router, self.hetero_fraction,
                self.hwa, self.router_copies, self.smooth, self.static_input_ranges, self.engine)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


for _m in (
    Method("none", "plain analog: the device as configured, no drift compensation, no calibration",
           device_overrides={"drift_compensation": "none"}),
    Method("global", "AIHWKit global drift compensation", device_overrides={"drift_compensation": "global"}),
    Method("per-column", "AIHWKit per-column drift compensation", device_overrides={"drift_compensation": "per-column"}),
    Method("remap-layer", "layer-wise (instead of column-wise) weight remapping to g_max",
           device_overrides={"weight_remap": "layerwise_symmetric"}),
    Method("clip", "weights clipped at 2.5 sigma (layer Gaussian) before programming, global drift comp.",
           device_overrides={"weight_clip": "layer_gaussian", "weight_clip_value": 2.5}),
    Method("input-range", "static DAC input ranges calibrated from data (AIHWKit), no noise management",
           device_overrides={"noise_management": "none"}, static_input_ranges=True),
    Method("digital-router", "routers kept digital (the cost of router noise)", analog_router=False),
    Method("hetero", "Chowdhury et al. 2026: top 12.5 % experts by max neuron norm + attention digital",
           hetero_fraction=0.125),
    Method("romer", "ROMER: percentile router normalization + expert replacement (average)", callbacks=_romer()),
    Method("romer-norm", "ROMER ablation: percentile normalization only", callbacks=_romer(replacement="none")),
    Method("romer-replace", "ROMER ablation: expert replacement only", callbacks=_romer(normalize=False)),
    Method("romer-split", "ROMER with split replicas (halves the hottest tile's load)", callbacks=_romer(replacement="split")),
    Method("router-ensemble", "4 programmed copies of every router tile, logits averaged (ours; 4x router tiles)",
           router_copies=4),
    Method("romer-seq", "ROMER calibrated layer by layer (layer l's statistics with layers < l corrected)",
           callbacks=_romer(), sequential_calibration=True),
    Method("romer-auto", "ROMER with percentiles and tau chosen on held-out calibration blocks (ours)",
           callbacks=_romer_auto()),
    Method("romer+hetero", "ROMER on top of the hetero baseline", hetero_fraction=0.125, callbacks=_romer()),
    Method("hwa", "AIHWKit hardware-aware training: routers and experts fine-tuned on training tiles (device "
           "periphery, ADD_NORMAL weight noise, output noise), then the device as configured", hwa=True),
    Method("hwa+romer", "ROMER on the hardware-aware trained model", hwa=True, callbacks=_romer()),
    Method("smooth", "analog-aware channel rescaling per norm -> router + experts group, scales chosen on the "
           "calibration data by the engine's simulated error (ours; EAQuant/NORA-like)",
           smooth=True),
    Method("input-range-pct", "static DAC input range per tile = 99.9th percentile of the per-token abs-max "
           "(does not clip outlier channels), no noise management (ours)",
           device_overrides={"noise_management": "none"}, static_input_ranges=True, input_percentile=99.9),
    Method("nm-max", "AIHWKit noise management 'max' (input scaled by its max, not abs-max)",
           device_overrides={"noise_management": "max"}),
    Method("router-align", "per-expert affine router correction fitted to the digital routing (KL + top-k "
           "hinge) on calibration tokens; 2E digital parameters per layer (ours; EAQuant/VSRAQ-like)",
           callbacks=_router_align),
):
    register_method(_m)

_CALLBACK_ORDER = {"romer": 0, "romer-auto": 0, "router-align": 1}
"""Callbacks of a composition run in this order: ROMER first, router-align refines what is installed."""


def compose_methods(name: str) -> Method:
    """The method ``"A+B+..."`` composed of registered methods (e.g. ``"smooth+romer"``).

    Device overrides are merged (conflicting values are an error), the conversion flags combined
    (a digital router if any part has one, the largest hetero fraction and router copy count),
    static input ranges and smoothing if any part has them, and the calibration callbacks run in
    the order ROMER, then router-align.

    Raises:
        InputError: an unknown part, conflicting device overrides, or parts that cannot combine
            (a selection method, two different input-range percentiles).
    """
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if len(parts) < 2:
        raise InputError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    methods = []
    for p in parts:
        if p not in METHODS:
            raise InputError(f"method {name!r}: unknown part {p!r}; valid methods: {', '.join(METHODS)}")
        methods.append(METHODS[p])
    overrides: dict[str, Any] = {}
    for m in methods:
        if m.candidates:
            raise InputError(f"method {name!r}: the selection method {m.name!r} cannot be composed")
        for k, v in m.device_overrides.items():
            if k in overrides and overrides[k] != v:
                raise InputError(f"method {name!r}: its parts set {k} to {overrides[k]!r} and {v!r}")
            overrides[k] = v
    percentiles = {m.input_percentile for m in methods if m.input_percentile is not None}
    if len(percentiles) > 1 or (percentiles and any(m.static_input_ranges and m.input_percentile is None
                                                     for m in methods)):
        raise InputError(f"method {name!r}: its parts calibrate input ranges in different ways")
    factories = [m.callbacks for m in methods if m.callbacks is not _no_callbacks]

    def callbacks() -> list:
        made = [cb for f in factories for cb in f()]
        return sorted(made, key=lambda cb: _CALLBACK_ORDER.get(cb.name, 0))

    return Method(
        name=name,
        description=f"composition of {', '.join(parts)} (see each; callbacks: ROMER, then router-align)",
        device_overrides=overrides,
        analog_router=all(m.analog_router for m in methods),
        hetero_fraction=max(m.hetero_fraction for m in methods),
        static_input_ranges=any(m.static_input_ranges for m in methods),
        callbacks=callbacks if factories else _no_callbacks,
        sequential_calibration=any(m.sequential_calibration for m in methods),
        router_copies=max(m.router_copies for m in methods),
        hwa=any(m.hwa for m in methods),
        smooth=any(m.smooth for m in methods),
        input_percentile=next(iter(percentiles)) if percentiles else None,
    )


for _name in ("smooth+romer", "router-align+romer", "input-range-pct+romer", "smooth+router-align",
              "smooth+router-align+romer", "smooth+hetero", "smooth+router-align+romer+hetero"):
    register_method(compose_methods(_name))

BEST_CANDIDATES = ("global", "romer", "smooth", "smooth+romer", "router-align", "router-align+romer",
                   "smooth+router-align", "smooth+router-align+romer", "hetero", "romer+hetero", "smooth+hetero",
                   "smooth+router-align+romer+hetero")
"""What ``best`` chooses from (those within its digital budget)."""

for _m in (
    Method("best", "the candidate with the lowest held-out calibration NLL per model, device and drift time, among "
           "those keeping <= 1 % of the MoE parameters digital (ours; the choice is recorded)",
           candidates=BEST_CANDIDATES, digital_budget=0.01),
    Method("best-any", "like best, without a digital budget (hetero candidates allowed)",
           candidates=BEST_CANDIDATES, digital_budget=None),
):
    register_method(_m)


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str | Method) -> Method:
    if isinstance(name, Method):
        return name
    if name in METHODS:
        return METHODS[name]
    if "+" in name:
        return compose_methods(name)
    raise InputError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")


def prepare_model(digital_model: nn.Module, device_config, method: str | Method, copy_model: bool = True,
                  calib_batches=None, batch_size: int = 8) -> nn.Module:
    """Convert (a copy of) ``digital_model`` the way ``method`` needs.

    ``calib_batches`` are needed by methods that edit the model before conversion (``smooth``).
    A selection method (``best``) must first be resolved with
    :func:`romer_aihwkit.experiments.best.choose_method`.
    """

    method = get_method(method)
    if method.candidates:
        raise InputError(f"method {method.name!r} chooses among other methods: resolve it first with "
                         "romer_aihwkit.experiments.best.choose_method (compare does this)")
    if method.smooth and calib_batches is None:
        raise InputError(f"method {method.name!r} chooses its channel scales on calibration data: pass calib_batches")
    if method.hwa:
        if not is_hwa_trained(digital_model):
            raise InputError(
                f"method {method.name!r} converts a hardware-aware trained model: pass the output of "
                "romer_aihwkit.baselines.hwa.hwa_finetune (or hwa_checkpoint); `compare` trains and caches it")
    config = load_device_config(device_config)
    if method.device_overrides:
        config = config.replace(**method.device_overrides)
    model = copy.deepcopy(digital_model) if copy_model else digital_model
    if method.smooth:
        smooth_model(model, config, calib_batches, batch_size)
    placement = (hetero_placement(model, config, method.hetero_fraction, method.analog_router)
                 if method.hetero_fraction > 0 else default_placement(config, analog_router=method.analog_router))

    # AIHWKit's calibrate_input_ranges works on its own tiles: such methods use the per-matrix reference path
    warn_fallback(f"static input ranges calibrated by AIHWKit (method {method.name!r})", method.engine)
    model = convert_to_analog_moe(model, config, placement=placement, engine=method.engine, progress=False)
    if method.router_copies > 1:
        install_router_ensemble(model, method.router_copies)
    return model


def apply_method(model: nn.Module, method: str | Method, seed: int, t_inference: float, calib_batches=None,
                 batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Program chip instance ``seed``, drift to ``t_inference`` and run the method's calibrations.

    Returns:
        The calibration report (empty when the method calibrates nothing).
    """

    method = get_method(method)
    if method.candidates:
        raise InputError(f"method {method.name!r} chooses among other methods: resolve it first with "
                         "romer_aihwkit.experiments.best.choose_method (compare does this)")
    if not isinstance(model, AnalogMoEModel):
        raise InputError(f"apply_method({method.name!r}): the model is not converted; pass the output of "
                         "prepare_model (or convert_to_analog_moe)")
    model.program_analog_weights(seed=seed, t_inference=t_inference, progress=progress)
    report: dict[str, Any] = {}
    if method.needs_calibration_data and calib_batches is None:
        raise InputError(f"method {method.name!r} needs calibration data (calib_batches)")
    if method.static_input_ranges:
        report["input_range_tiles"] = calibrate_static_input_ranges(model, calib_batches, batch_size,
                                                                    percentile=method.input_percentile)
    smoothed = getattr(model, "smooth_report", None)
    if smoothed:
        report["smooth"] = {g["norm"]: {"alpha": g["chosen_alpha"], "score": g["score"],
                                        "baseline_score": g["baseline_score"]} for g in smoothed["groups"]}
    callbacks = method.callbacks()
    if callbacks:
        report.update(calibrate(model, calib_batches, callbacks, batch_size=batch_size, progress=progress,
                                sequential=method.sequential_calibration).to_dict())
    return report


def digital_parameter_fraction(digital_model: nn.Module, method: str | Method) -> dict[str, Any]:
    """The share of the MoE parameters ``method`` keeps digital on ``digital_model`` (a digital model).

    MoE parameters are all parameters of the MoE blocks (router, routed and shared experts).
    Digital: the experts hetero keeps digital, the routers of a digital-router method, and the
    ``2 E`` per-layer correction parameters of router-align (counted as extra digital parameters).
    Shared experts stay analog in every method. Returns ``{"digital", "moe", "fraction"}``.
    """

    method = get_method(method)
    blocks = find_moe_blocks(digital_model)
    moe = sum(p.numel() for _, block, _ in blocks for p in block.parameters())
    digital = 0
    hetero = select_hetero_experts(digital_model, method.hetero_fraction) if method.hetero_fraction > 0 else {}
    aligned = any(getattr(cb, "name", "") == "router-align" for cb in method.callbacks())
    for layer, (_, block, adapter) in enumerate(blocks):
        gate_up, down, _ = adapter.expert_weights(block)
        n_experts = len(gate_up)
        hidden = int(gate_up[0].shape[-1])
        for e in hetero.get(layer, []):
            digital += gate_up[e].numel() + down[e].numel()
        if not method.analog_router:
            digital += n_experts * hidden
        if aligned:
            digital += 2 * n_experts
    return {"digital": int(digital), "moe": int(moe), "fraction": digital / moe if moe else 0.0}
