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
        if config.noise_management == "constant":
            items.append(f"constant input scaling by {config.nm_thres or 1.0:g} before the DAC (noise_management constant)")
        elif config.nm_thres > 0 and config.noise_management != "none":
            items.append(f"input scale capped at nm_thres {config.nm_thres:g}")
        if config.inp_noise > 0:
            items.append(f"Gaussian input (DAC) noise, std {config.inp_noise:g}, every MVM")
        if config.ir_drop > 0:
            items.append(f"IR drop along the input lines, {config.ir_drop:g} x the wire resistance "
                         f"(wire/device conductance ratio {config.ir_drop_g_ratio:.4g}), as AIHWKit's C++ tiles")
        if config.r_series > 0:
            items.append(f"series resistance of the output lines, {config.r_series:g} of the output current")
        if config.w_noise > 0:
            formula = "w_noise * sqrt(sum_j |w_ij| x_j^2)" if config.w_noise_type == "pcm_read" else "w_noise * ||x||"
            items.append(f"per-MVM weight read noise ({config.w_noise_type}, w_noise {config.w_noise:g}): output "
                         f"noise of std {formula}, resampled every MVM, as AIHWKit's C++ tiles")
        if config.out_nonlinearity > 0:
            items.append(f"S-shaped output non-linearity y / (1 + n|y|), n = {config.out_nonlinearity:g} / out_bound"
                         + (f", slope calibrated at {config.slope_calibration:g} of the range"
                            if config.slope_calibration > 0 else ""))
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
                         "input ranges (initially 3.0, learned in hardware-aware training; left untrained they "
                         "clip every larger activation) followed by constant noise management (nm_thres 1)")
        if config.w_noise == 0:
            items.append("no per-MVM weight read noise (StandardHWATrainingPreset: forward.w_noise 0.0175, PCM_READ)")
        if config.ir_drop == 0:
            items.append("no IR drop (StandardHWATrainingPreset: forward.ir_drop 1.0)")
    return items


def unmodelled_nonidealities(config: DeviceConfig) -> list[str]:
    """Effects ``config`` does *not* simulate (limits of AIHWKit's torch tiles, the noise model or choice).

    Args:
        config: A validated device config.

    Returns:
        One item per effect left out.
    """
    items = []
    if config.w_noise == 0:
        items.append("per-MVM short-term weight read noise (w_noise 0): only the noise model's read noise, "
                     "sampled once at drift time, is present")
    if config.ir_drop == 0:
        items.append("IR drop (ir_drop 0)")
    if config.out_nonlinearity == 0:
        items.append("S-shaped output non-linearity (out_nonlinearity 0)")
    items += [
        "per-line random draws AIHWKit's C++ tiles make once per tile: voltage offsets (v_offset_std), "
        "output-to-output non-linearity spread (out_nonlinearity_std), device polarity read asymmetry "
        "(w_read_asymmetry_dtod): chip state that is not drawn per chip instance here",
        "time-resolved IR drop (AIHWKit's TorchInferenceRPUConfigIRDropT): the steady-state C++ model is used",
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

