"""``DeviceConfig`` -> AIHWKit: the noise model object and the ``TorchInferenceRPUConfig`` of a device."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..errors import DeviceConfigError, EngineError
from .noise_models import noise_model_spec

if TYPE_CHECKING:  # pragma: no cover
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    from .schema import DeviceConfig

__all__ = [
    "CXX_FORWARD_FIELDS",
    "CXX_FORWARD_OFF",
    "aihwkit_rpu_config",
    "bits_to_res",
    "cxx_only_forward",
    "cxx_tiles_available",
    "is_ideal_periphery",
    "noise_model_object",
    "rpu_config",
]

CXX_FORWARD_FIELDS = ("inp_noise", "w_noise", "ir_drop", "out_nonlinearity", "r_series")
"""Device-config fields of forward non-idealities that AIHWKit's C++ tiles simulate and its torch
tiles reject (the stacked engine simulates them too)."""

CXX_FORWARD_OFF = {"inp_noise": 0.0, "w_noise": 0.0, "w_noise_type": "none", "ir_drop": 0.0, "out_nonlinearity": 0.0,
                   "slope_calibration": 0.0, "r_series": 0.0}
"""Device-config overrides that turn every C++-only forward non-ideality off (AIHWKit's torch-tile subset)."""

REFERENCE_ENV_HINT = (
    "AIHWKit's C++ tiles run with torch 2.10.x (aihwkit 1.1.0 wheels): build that environment with "
    "`make reference-env` (scripts/reference_env.sh, a separate .venv-ref), or use engine='stacked'"
)


def bits_to_res(bits: int | None) -> float:
    """AIHWKit's convention: an n-bit converter has 2**n - 2 levels (8 bit -> 254); -1 = off.

    Args:
        bits: Converter resolution, or ``None`` for none.

    Returns:
        AIHWKit's ``inp_res`` / ``out_res`` value.
    """
    return -1.0 if bits is None else float(2**bits - 2)


def noise_model_object(config: DeviceConfig) -> BaseNoiseModel:
    """A fresh AIHWKit noise model for ``config``, built by its entry in the noise-model table.

    Args:
        config: A validated device config.

    Returns:
        The noise model instance.
    """
    return noise_model_spec(config.noise_model).build(config)


def is_ideal_periphery(config: DeviceConfig) -> bool:
    """True when the MVM periphery adds nothing (AIHWKit ``forward.is_perfect``).

    Args:
        config: A device config.

    Returns:
        Whether no DAC, ADC, bound or output noise is set.
    """
    return (
        config.dac_bits is None
        and config.adc_bits is None
        and config.out_noise == 0.0
        and config.inp_bound is None
        and config.out_bound is None
        and not cxx_only_forward(config)
        and config.noise_management != "constant"
    )


def cxx_only_forward(config: DeviceConfig) -> list[str]:
    """The forward non-idealities ``config`` sets that AIHWKit's torch tiles reject.

    Args:
        config: A device config.

    Returns:
        ``field=value`` items (empty when the torch tiles run this config).
    """
    return [f"{name}={getattr(config, name):g}" for name in CXX_FORWARD_FIELDS if getattr(config, name) > 0.0]


@functools.lru_cache(maxsize=1)
def cxx_tiles_available() -> str | None:
    """``None`` when AIHWKit's C++ tiles (``aihwkit.simulator.rpu_base``) import and run here, else why not."""
    try:
        import torch
        from aihwkit.simulator.configs import InferenceRPUConfig
        from aihwkit.simulator.tiles.inference import InferenceTile

        tile = InferenceTile(2, 2, InferenceRPUConfig())
        tile.forward(torch.ones(1, 2))
    except Exception as exc:  # noqa: BLE001 - any failure means no C++ tiles (ImportError, undefined symbol, ...)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


def aihwkit_rpu_config(config: DeviceConfig):
    """The rpu_config of ``engine="aihwkit"`` (AIHWKit's own tiles, the reference path).

    AIHWKit's torch tiles (:func:`rpu_config`) when they simulate everything ``config`` sets; its
    C++ tiles (an ``InferenceRPUConfig`` with the same fields) for the forward non-idealities only
    those simulate (:data:`CXX_FORWARD_FIELDS`).

    Raises:
        EngineError: The config needs the C++ tiles and they do not run in this environment
            (names the settings and how to get an environment where they do).
    """
    needs = cxx_only_forward(config)
    torch_config = rpu_config(config)
    if not needs:
        return torch_config

    reason = cxx_tiles_available()
    if reason is not None:
        raise EngineError(
            f"device config {config.name!r} sets {', '.join(needs)}, which AIHWKit's torch tiles reject and "
            f"only its C++ tiles simulate, but they do not run here ({reason}). {REFERENCE_ENV_HINT}."
        )
    if config.noise_management != "none" and config.inp_bound != 1.0:
        raise DeviceConfigError("AIHWKit's C++ tiles (needed for " + ", ".join(needs) + ") require inp_bound 1.0 "
                                f"with noise management {config.noise_management!r}", field="inp_bound")
    from aihwkit.simulator.configs import InferenceRPUConfig

    return InferenceRPUConfig(
        forward=torch_config.forward,
        mapping=torch_config.mapping,
        remap=torch_config.remap,
        clip=torch_config.clip,
        pre_post=torch_config.pre_post,
        noise_model=torch_config.noise_model,
        drift_compensation=torch_config.drift_compensation,
    )


def rpu_config(config: DeviceConfig) -> TorchInferenceRPUConfig:
    """A fresh :class:`~aihwkit.simulator.configs.TorchInferenceRPUConfig` for ``config``.

    Args:
        config: A validated device config.

    Returns:
        The RPU config: forward periphery, mapping, remap, clip, input range, noise model, drift
        compensation. The C++-tile forward non-idealities (:data:`CXX_FORWARD_FIELDS`) are set in
        ``forward`` as well: the stacked engine reads them; AIHWKit's torch tiles refuse them, so the
        per-matrix path takes :func:`aihwkit_rpu_config` instead.
    """
    from aihwkit.inference.compensation.drift import (
        GlobalDriftCompensation,
        PerColumnDriftCompensation,
    )
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters import (
        InputRangeParameter,
        IOParameters,
        MappingParameter,
        PrePostProcessingParameter,
        WeightClipParameter,
        WeightRemapParameter,
    )
    from aihwkit.simulator.parameters.enums import (
        BoundManagementType,
        NoiseManagementType,
        WeightClipType,
        WeightNoiseType,
        WeightRemapType,
    )

    forward = IOParameters(
        is_perfect=is_ideal_periphery(config),
        inp_res=bits_to_res(config.dac_bits),
        inp_bound=config.inp_bound if config.inp_bound is not None else 0.0,  # <= 0: no clipping
        out_res=bits_to_res(config.adc_bits),
        out_bound=config.out_bound if config.out_bound is not None else 0.0,  # <= 0: no clipping
        out_noise=config.out_noise,
        noise_management={
            "none": NoiseManagementType.NONE,
            "abs_max": NoiseManagementType.ABS_MAX,
            "max": NoiseManagementType.MAX,
            "constant": NoiseManagementType.CONSTANT,
        }[config.noise_management],
        nm_thres=config.nm_thres,
        bound_management={
            "none": BoundManagementType.NONE,
            "iterative": BoundManagementType.ITERATIVE,
        }[config.bound_management],
        # C++-tile forward non-idealities (the torch tiles reject them; the stacked engine simulates them)
        inp_noise=config.inp_noise,
        w_noise=config.w_noise,
        w_noise_type={
            "none": WeightNoiseType.NONE,
            "pcm_read": WeightNoiseType.PCM_READ,
            "additive_constant": WeightNoiseType.ADDITIVE_CONSTANT,
        }[config.w_noise_type],
        ir_drop=config.ir_drop,
        ir_drop_g_ratio=config.ir_drop_g_ratio,
        out_nonlinearity=config.out_nonlinearity,
        slope_calibration=config.slope_calibration,
        r_series=config.r_series,
    )
    remap_type = {
        "none": WeightRemapType.NONE,
        "layerwise_symmetric": WeightRemapType.LAYERWISE_SYMMETRIC,
        "channelwise_symmetric": WeightRemapType.CHANNELWISE_SYMMETRIC,
    }[config.weight_remap]
    mapping = MappingParameter(
        digital_bias=True,
        weight_scaling_omega=0.0 if config.weight_remap == "none" else 1.0,
        weight_scaling_columnwise=config.weight_remap == "channelwise_symmetric",
        learn_out_scaling=False,
        max_input_size=config.max_input_size,
        max_output_size=config.max_output_size,
    )
    if config.weight_clip == "fixed":
        clip = WeightClipParameter(
            type=WeightClipType.FIXED_VALUE, fixed_value=float(config.weight_clip_value or 0.0)  # set: validated
        )
    elif config.weight_clip == "layer_gaussian":
        sigma = 2.5 if config.weight_clip_value is None else float(config.weight_clip_value)
        clip = WeightClipParameter(type=WeightClipType.LAYER_GAUSSIAN, sigma=sigma)
    else:
        clip = WeightClipParameter(type=WeightClipType.NONE)
    ir = config.input_range
    pre_post = PrePostProcessingParameter(
        input_range=InputRangeParameter(
            enable=ir.enable,
            init_value=ir.init_value,
            learn_input_range=ir.learn_input_range,
            init_from_data=ir.init_from_data,
            init_std_alpha=ir.init_std_alpha,
        )
    )
    drift_compensation = {
        "none": None,
        "global": GlobalDriftCompensation,
        "per-column": PerColumnDriftCompensation,
    }[config.drift_compensation]
    return TorchInferenceRPUConfig(
        forward=forward,
        mapping=mapping,
        remap=WeightRemapParameter(type=remap_type),
        clip=clip,
        pre_post=pre_post,
        noise_model=noise_model_object(config),
        drift_compensation=drift_compensation() if drift_compensation else None,
    )
