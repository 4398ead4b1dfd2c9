"""What a device config does and does not simulate, and where it departs from AIHWKit's defaults (prose)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .mapping import bits_to_res, is_ideal_periphery
from .noise_models import noise_model_spec

if TYPE_CHECKING:  # pragma: no cover
    from .schema import DeviceConfig

__all__ = ["aihwkit_deviations", "modelled_nonidealities", "unmodelled_nonidealities"]


def modelled_nonidealities(config: DeviceConfig) -> list[str]:
    """What ``config`` simulates, one item per effect (honest and specific).

    Args:
        config: A validated device config.

    Returns:
        The noise model's effects (from its table entry), then compensation, mapping and periphery.
    """
    items: list[str] = list(noise_model_spec(config.noise_model).modelled(config))
    if config.drift_compensation != "none":
        items.append(f"drift compensation: {config.drift_compensation} (AIHWKit)")
    if config.weight_remap != "none":
        items.append(f"weight remapping: {config.weight_remap} onto the conductance range")
    if config.weight_clip == "fixed":
        items.append(f"weight clipping at |w| <= {config.weight_clip_value:g} "
                     "(applied by tile.post_update_step())")
    elif config.weight_clip == "layer_gaussian":
        sigma = 2.5 if config.weight_clip_value is None else config.weight_clip_value
        items.append(f"weight clipping at {sigma:g} std of the layer "
                     "(applied by tile.post_update_step())")
    if not is_ideal_periphery(config):
        if config.noise_management != "none":
            items.append(f"dynamic input scaling per input vector ({config.noise_management})")
        if config.input_range.enable:
            items.append(f"static input range per tile (init {config.input_range.init_value:g};"
                         " calibrate with calibrate_input_ranges)")
        if config.inp_bound is not None:
            items.append(f"input clipping at {config.inp_bound:g}")
        if config.dac_bits is not None:
            items.append(f"DAC: {config.dac_bits}-bit input quantization "
                         f"({int(bits_to_res(config.dac_bits))} levels)")
        if config.adc_bits is not None:
            items.append(f"ADC: {config.adc_bits}-bit output quantization "
                         f"({int(bits_to_res(config.adc_bits))} levels)")
        if config.out_bound is not None:
            items.append(f"output clipping at {config.out_bound:g}"
                         + (" with iterative bound management"
                            if config.bound_management == "iterative" else ""))
        if config.out_noise > 0:
            items.append(f"additive Gaussian output noise, std {config.out_noise:g}, every MVM")
    if config.max_input_size or config.max_output_size:
        items.append(f"tile size {config.max_input_size or 'any'} x "
                     f"{config.max_output_size or 'any'} (larger matrices are split)")
    return items


def aihwkit_deviations(config: DeviceConfig) -> list[str]:
    """Where ``config`` departs from AIHWKit's own defaults (shown by ``devices show``).

    Compared with the noise model's default ``g_max`` and, for configs with AIHWKit's hardware
    periphery (DAC/ADC and channelwise remapping), with ``StandardHWATrainingPreset``.

    Args:
        config: A validated device config.

    Returns:
        One item per deviation.
    """
    items: list[str] = []
    spec = noise_model_spec(config.noise_model)
    if config.g_max is not None and spec.default_g_max is not None and config.g_max != spec.default_g_max:
        items.append(f"g_max {config.g_max:g} uS (AIHWKit's {spec.aihwkit_class} default: {spec.default_g_max:g} uS)")
    if config.dac_bits is not None and config.weight_remap == "channelwise_symmetric":
        if config.max_output_size != 0:
            items.append(f"tiles of at most {config.max_output_size} output columns (AIHWKit's "
                         "StandardHWATrainingPreset: 0, no column limit)")
        if config.max_input_size != 512:
            items.append(f"tiles of at most {config.max_input_size} input rows (StandardHWATrainingPreset: 512)")
        items.append("mapping.learn_out_scaling off (StandardHWATrainingPreset: on; it is learned in "
                     "hardware-aware training, which this project does not run)")
        if not config.input_range.enable:
            items.append(f"dynamic input scaling ({config.noise_management}) instead of the preset's static "
                         "input ranges learned in hardware-aware training")
        items.append("no per-MVM weight read noise (StandardHWATrainingPreset: forward.w_noise 0.0175, "
                     "which AIHWKit's torch tiles reject)")
    return items


def unmodelled_nonidealities(config: DeviceConfig) -> list[str]:
    """Effects ``config`` does *not* simulate (limits of AIHWKit's torch tiles, the noise model or choice).

    Args:
        config: A validated device config.

    Returns:
        One item per effect left out.
    """
    items = [
        "per-MVM short-term weight read noise (forward.w_noise): rejected by AIHWKit's torch "
        "tiles; only the noise model's read noise, sampled once at drift time, is present",
        "IR drop, S-shaped output non-linearity, voltage offsets (not supported by torch tiles)",
        "analog bias (biases stay digital)",
    ]
    items.extend(noise_model_spec(config.noise_model).unmodelled)
    if config.dac_bits is None:
        items.append("input (DAC) quantization")
    if config.adc_bits is None:
        items.append("output (ADC) quantization")
    if config.out_noise == 0:
        items.append("output noise")
    return items

