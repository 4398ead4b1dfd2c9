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

from ..errors import InputError
from ..validate import check_finite_fields

__all__ = ["Method", "METHODS", "get_method", "list_methods", "register_method", "prepare_model", "apply_method"]


def _romer(**kwargs) -> Callable[[], list]:
    def make() -> list:
        from ..calibration import Romer

        return [Romer(**kwargs)]

    return make


def _romer_auto() -> Callable[[], list]:
    def make() -> list:
        from ..calibration import RomerAuto

        return [RomerAuto()]

    return make


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

    def __post_init__(self) -> None:
        check_finite_fields(self, f"method {self.name!r}:")
        if not 0.0 <= self.hetero_fraction < 1.0:
            raise InputError(f"method {self.name!r}: hetero_fraction must be in [0, 1), got {self.hetero_fraction!r}")
        if isinstance(self.router_copies, bool) or not isinstance(self.router_copies, int) or self.router_copies < 1:
            raise InputError(f"method {self.name!r}: router_copies must be a positive integer, got {self.router_copies!r}")

    @property
    def needs_calibration_data(self) -> bool:
        return self.static_input_ranges or bool(self.callbacks())

    @property
    def edits_model(self) -> bool:
        """Whether the method changes the model itself, not only the chip it runs on.

        True for anything that edits weights, routing or masks (calibration callbacks such as
        ROMER's normalization and expert replacement, hardware-aware training, weights clipped
        before programming), and for the methods that change which parts are analog or how often
        they are programmed (hetero, router ensembles): on a noise-free chip those must reproduce
        the digital model, and the comparison's noise-free control checks that they do. False for
        settings of the chip alone (drift compensation, remapping, input ranges, a digital router),
        which on a noise-free chip are the digital model by construction.

        ``compare`` runs every such method also on the ``ideal`` device (same calibration data and
        seed): its perplexity there minus the digital one is the method's edit (``edit_ppl``).
        """
        clip = str(self.device_overrides.get("weight_clip", "none")).lower() not in ("none", "")
        return bool(self.callbacks()) or self.hwa or self.hetero_fraction > 0 or self.router_copies > 1 or clip

    @property
    def engine(self) -> str:
        """The analog engine this method converts with: AIHWKit's static input-range calibration
        works on AIHWKit's own tiles (``"aihwkit"``), everything else on the stacked engine."""
        return "aihwkit" if self.static_input_ranges else "stacked"

    def conversion_key(self) -> tuple:
        """Methods with equal keys can share one converted model (everything conversion reads,
        including what picks the engine)."""
        return (tuple(sorted(self.device_overrides.items(), key=str)), self.analog_router, self.hetero_fraction,
                self.hwa, self.router_copies, self.engine)


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
):
    register_method(_m)


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str | Method) -> Method:
    if isinstance(name, Method):
        return name
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def prepare_model(digital_model: nn.Module, device_config, method: str | Method, copy_model: bool = True) -> nn.Module:
    """Convert (a copy of) ``digital_model`` the way ``method`` needs."""
    from ..analog import convert_to_analog_moe
    from ..baselines.hetero import select_hetero_experts
    from ..devices import load_device_config

    method = get_method(method)
    if method.hwa:
        from ..baselines.hwa import is_hwa_trained

        if not is_hwa_trained(digital_model):
            raise InputError(
                f"method {method.name!r} converts a hardware-aware trained model: pass the output of "
                "romer_aihwkit.baselines.hwa.hwa_finetune (or hwa_checkpoint); `compare` trains and caches it")
    config = load_device_config(device_config)
    if method.device_overrides:
        config = config.replace(**method.device_overrides)
    model = copy.deepcopy(digital_model) if copy_model else digital_model
    digital = select_hetero_experts(model, method.hetero_fraction) if method.hetero_fraction > 0 else None
    if method.engine == "aihwkit":
        from ..analog.convert import _warn_fallback

        # AIHWKit's calibrate_input_ranges works on its own tiles: use the per-matrix reference path
        _warn_fallback(f"static input ranges calibrated by AIHWKit (method {method.name!r})")
    model = convert_to_analog_moe(model, config, analog_router=method.analog_router, digital_experts=digital,
                                  engine=method.engine, progress=False)
    if method.router_copies > 1:
        from ..baselines.router_ensemble import install_router_ensemble

        install_router_ensemble(model, method.router_copies)
    return model


def apply_method(model: nn.Module, method: str | Method, seed: int, t_inference: float, calib_batches=None,
                 batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Program chip instance ``seed``, drift to ``t_inference`` and run the method's calibrations.

    Returns:
        The calibration report (empty when the method calibrates nothing).
    """
    from ..analog import AnalogMoEModel
    from ..baselines.input_range import calibrate_static_input_ranges
    from ..calibration import calibrate

    method = get_method(method)
    if not isinstance(model, AnalogMoEModel):
        raise InputError(f"apply_method({method.name!r}): the model is not converted; pass the output of "
                         "prepare_model (or convert_to_analog_moe)")
    model.program_analog_weights(seed=seed, t_inference=t_inference, progress=progress)
    report: dict[str, Any] = {}
    if method.needs_calibration_data and calib_batches is None:
        raise InputError(f"method {method.name!r} needs calibration data (calib_batches)")
    if method.static_input_ranges:
        report["input_range_tiles"] = calibrate_static_input_ranges(model, calib_batches, batch_size)
    callbacks = method.callbacks()
    if callbacks:
        report.update(calibrate(model, calib_batches, callbacks, batch_size=batch_size, progress=progress,
                                sequential=method.sequential_calibration).to_dict())
    return report
