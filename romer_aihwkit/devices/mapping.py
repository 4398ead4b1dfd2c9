"""``DeviceConfig`` -> AIHWKit: the noise model object and the ``TorchInferenceRPUConfig`` of a device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .noise_models import noise_model_spec

if TYPE_CHECKING:  # pragma: no cover
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    from .schema import DeviceConfig

__all__ = ["bits_to_res", "is_ideal_periphery", "noise_model_object", "rpu_config"]


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
    )


def rpu_config(config: DeviceConfig) -> TorchInferenceRPUConfig:
    """A fresh :class:`~aihwkit.simulator.configs.TorchInferenceRPUConfig` for ``config``.

    Args:
        config: A validated device config.

    Returns:
        The RPU config: forward periphery, mapping, remap, clip, input range, noise model, drift compensation.
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
        inp_noise=0.0,
        out_res=bits_to_res(config.adc_bits),
        out_bound=config.out_bound if config.out_bound is not None else 0.0,  # <= 0: no clipping
        out_noise=config.out_noise,
        noise_management={
            "none": NoiseManagementType.NONE,
            "abs_max": NoiseManagementType.ABS_MAX,
            "max": NoiseManagementType.MAX,
        }[config.noise_management],
        bound_management={
            "none": BoundManagementType.NONE,
            "iterative": BoundManagementType.ITERATIVE,
        }[config.bound_management],
        w_noise=0.0,
        w_noise_type=WeightNoiseType.NONE,  # rejected by the torch tile
        ir_drop=0.0,  # rejected by the torch tile
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
