"""The noise-model table: one entry per AIHWKit noise model a device config can name.

Each :class:`NoiseModelSpec` says which AIHWKit class the ``noise_model`` name maps to, how the
config's fields become its constructor arguments, which scale fields and ``g_max`` values it
accepts, which inference times it has data for, what it models (in words) and where its numbers
come from. Adding a noise model means adding one entry to :data:`NOISE_MODEL_TABLE` (or calling
:func:`register_noise_model`) and a preset YAML that names it; validation, the AIHWKit mapping and
``devices show`` read everything from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from aihwkit.inference.noise.base import BaseNoiseModel

__all__ = [
    "NOISE_MODEL_TABLE",
    "NoiseModelSpec",
    "SCALE_FIELDS",
    "WAN2022_T_INFERENCE",
    "noise_model_spec",
    "register_noise_model",
]

SCALE_FIELDS = ("prog_noise_scale", "read_noise_scale", "drift_scale")
"""The config fields that multiply a noise model's terms (1.0 = the model as fitted)."""

WAN2022_T_INFERENCE: tuple[float, ...] = (1.0, 86400.0, 172800.0)
"""The only inference times (s) with data in ``ReRamWan2022NoiseModel``: 1 s, 1 day, 2 days."""


@dataclass(frozen=True)
class NoiseModelSpec:
    """One noise model: its AIHWKit class, how a config maps onto it, and what it models."""

    name: str
    """The ``noise_model`` value in a device config."""
    aihwkit_class: str
    """AIHWKit class name, for messages and listings."""
    summary: str
    """One line for :data:`~romer_aihwkit.devices.NOISE_MODELS` (the class and how it is used)."""
    build: Callable[[Any], BaseNoiseModel]
    """``config -> a fresh AIHWKit noise model`` (the field-to-constructor mapping)."""
    source: str = ""
    """Where the model's numbers come from."""
    scales: tuple[str, ...] = SCALE_FIELDS
    """Which of :data:`SCALE_FIELDS` the model honours; the others must stay 1.0."""
    default_g_max: float | None = None
    """The ``g_max`` (uS) AIHWKit uses when given none (``None``: no AIHWKit default to compare)."""
    g_max_max: float | None = None
    """Largest ``g_max`` (uS) the model is characterised for (``None``: the field's range)."""
    g_min: float | None = None
    """The model's ``g_min`` (uS); ``g_max`` must lie above it (``None``: no constraint)."""
    needs_noise_level: bool = False
    """Whether the config must set ``noise_level`` (only then may it)."""
    allowed_t_inference: tuple[float, ...] | None = None
    """The only inference times (s) the model has data for (``None``: any)."""
    modelled: Callable[[Any], list[str]] = lambda config: []
    """``config -> what the model simulates``, one item per effect, for ``devices show``."""
    unmodelled: tuple[str, ...] = ()
    """Effects this model leaves out beyond the torch tiles' common limits."""


def _g(config: Any) -> str:
    return f"g_max={config.g_max:g} uS" if config.g_max is not None else "model default g_max"


def _scales(config: Any) -> dict[str, float]:
    return {name: getattr(config, name) for name in SCALE_FIELDS}


# Never pass prog_coeff_g_max_reference / coeff_g_max_reference to AIHWKit's models: in aihwkit 1.1
# passing them leaves the attribute unset and the model fails on first use.
def _pcm(config: Any) -> BaseNoiseModel:
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel

    return PCMLikeNoiseModel(g_max=config.g_max, **_scales(config))


def _hermes(config: Any) -> BaseNoiseModel:
    from aihwkit.inference.noise.hermes import HermesNoiseModel

    return HermesNoiseModel(g_max=config.g_max, **_scales(config))


def _wan2022(config: Any) -> BaseNoiseModel:
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel

    return ReRamWan2022NoiseModel(g_max=config.g_max, noise_scale=config.prog_noise_scale)


def _cmo(config: Any) -> BaseNoiseModel:
    from aihwkit.inference.noise.reram import ReRamCMONoiseModel

    return ReRamCMONoiseModel(g_max=config.g_max, **_scales(config))


_SILENT = {"drift_nu_mean": 0.0, "drift_nu_std": 0.0, "read_noise_scale": 0.0}


def _gaussian(config: Any) -> BaseNoiseModel:
    from aihwkit.inference.noise.custom import StateIndependentNoiseModel

    g_max = 25.0 if config.g_max is None else config.g_max
    return StateIndependentNoiseModel(g_max=g_max, prog_coeff=[float(config.noise_level) * g_max, 0.0, 0.0],
                                      prog_noise_scale=config.prog_noise_scale, **_SILENT)


def _none(config: Any) -> BaseNoiseModel:
    """AIHWKit's own model with every term off: an identity up to the weight -> conductance round trip."""
    from aihwkit.inference.noise.custom import StateIndependentNoiseModel

    return StateIndependentNoiseModel(g_max=config.g_max, prog_noise_scale=0.0, **_SILENT)


_READ_NOISE_AT_DRIFT = "sampled once at drift_analog_weights(t)"
_NO_DRIFT = "drift and accumulated read noise (this noise model has none)"

NOISE_MODEL_TABLE: dict[str, NoiseModelSpec] = {
    spec.name: spec
    for spec in (
        NoiseModelSpec(
            "none", "StateIndependentNoiseModel", "StateIndependentNoiseModel with every scale 0 (identity)", _none,
            source="correctness check: reproduces the digital model", scales=(), unmodelled=(_NO_DRIFT,)),
        NoiseModelSpec(
            "pcm", "PCMLikeNoiseModel", "PCMLikeNoiseModel", _pcm, default_g_max=25.0,
            source="Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 2020",
            modelled=lambda c: [
                f"programming noise: AIHWKit PCMLikeNoiseModel, conductance dependent ({_g(c)}, "
                f"x{c.prog_noise_scale:g})",
                f"conductance drift (power law, per-device nu; x{c.drift_scale:g})",
                f"accumulated 1/f read noise up to t_inference (x{c.read_noise_scale:g}), {_READ_NOISE_AT_DRIFT}",
            ]),
        NoiseModelSpec(
            "hermes-pcm", "HermesNoiseModel", "HermesNoiseModel", _hermes, default_g_max=20.7, g_max_max=20.7,
            source="IBM HERMES chip (Le Gallo et al., Nat. Electron. 2023)",
            modelled=lambda c: [
                f"programming noise: AIHWKit HermesNoiseModel, 2 PCM devices per weight ({_g(c)}, "
                f"x{c.prog_noise_scale:g})",
                f"conductance drift measured on HERMES (x{c.drift_scale:g})",
                f"accumulated 1/f read noise up to t_inference (x{c.read_noise_scale:g}), {_READ_NOISE_AT_DRIFT}",
            ]),
        NoiseModelSpec(
            "rram-wan2022", "ReRamWan2022NoiseModel", "ReRamWan2022NoiseModel", _wan2022, default_g_max=25.0,
            source="NeuRRAM chip (Wan et al., Nature 2022)", scales=("prog_noise_scale",),
            allowed_t_inference=WAN2022_T_INFERENCE,
            modelled=lambda c: [
                f"programming noise: AIHWKit ReRamWan2022NoiseModel polynomial fit ({_g(c)}, "
                f"x{c.prog_noise_scale:g})",
                "conductance relaxation at 1 s / 1 day / 2 days (re-sampled around the target at "
                "drift_analog_weights(t))",
            ],
            unmodelled=("ReRAM short-term read noise (~1 %, AIHWKit suggests forward.w_noise=0.01"
                        " which torch tiles reject)",)),
        NoiseModelSpec(
            "rram-cmo", "ReRamCMONoiseModel", "ReRamCMONoiseModel", _cmo, default_g_max=88.2, g_min=9.0,
            source="IBM CMO/HfOx ReRAM (Falcone et al., in review, as cited by AIHWKit)",
            modelled=lambda c: [
                f"programming noise: AIHWKit ReRamCMONoiseModel, 1 device per weight ({_g(c)}, "
                f"x{c.prog_noise_scale:g})",
                f"conductance decay, mean and spread growing with log t (x{c.drift_scale:g})",
                f"accumulated read noise up to t_inference (x{c.read_noise_scale:g})",
            ]),
        NoiseModelSpec(
            "gaussian", "StateIndependentNoiseModel", "StateIndependentNoiseModel (programming noise only)",
            _gaussian, default_g_max=25.0, source="sweeps", scales=("prog_noise_scale",), needs_noise_level=True,
            modelled=lambda c: [
                f"programming noise: AIHWKit StateIndependentNoiseModel, Gaussian, std "
                f"{100 * float(c.noise_level) * c.prog_noise_scale:g} % of g_max per device "
                "(two devices per weight), no drift, no read noise"
            ],
            unmodelled=(_NO_DRIFT,)),
    )
}
"""Every accepted ``noise_model`` value and its :class:`NoiseModelSpec`."""


def register_noise_model(spec: NoiseModelSpec) -> None:
    """Add (or replace) a noise model; device configs may then name it as ``noise_model``.

    Args:
        spec: Its table entry.
    """
    NOISE_MODEL_TABLE[spec.name] = spec


def noise_model_spec(name: str) -> NoiseModelSpec:
    """The table entry of ``name``.

    Args:
        name: A ``noise_model`` value.

    Returns:
        Its :class:`NoiseModelSpec`.

    Raises:
        KeyError: ``name`` is not in the table (device configs are validated before this is asked).
    """
    return NOISE_MODEL_TABLE[name]
