"""Static input ranges calibrated from data (AIHWKit ``calibrate_input_ranges``) as a callback-free step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["calibrate_static_input_ranges"]


def calibrate_static_input_ranges(model: nn.Module, calib_batches, batch_size: int = 8, quantile: float = 0.99995) -> int:
    """Set every analog tile's DAC input range from the calibration data's input quantile.

    Uses AIHWKit's own post-training calibration (``CACHE_QUANTILE``) over all tiles of the
    converted model. Returns the number of tiles calibrated.
    """
    from aihwkit.inference.calibration import InputRangeCalibrationType, calibrate_input_ranges
    from aihwkit.nn.modules.base import AnalogLayerBase

    from ..analog.matrix import AnalogMatrix
    from ..data import iter_token_batches

    class _AnalogTilesOf(AnalogLayerBase, nn.Module):
        """Presents the converted HF model to AIHWKit as one analog module."""

        def __init__(self, inner: nn.Module) -> None:
            nn.Module.__init__(self)
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    view: Any = _AnalogTilesOf(model)  # AIHWKit is untyped: its analog-module methods are not visible
    view.eval()  # AIHWKit restores this mode on the whole model afterwards
    device = next(model.parameters()).device
    batches: list[tuple[tuple[torch.Tensor, ...], dict[str, Any]]] = [
        ((b.to(device),), {}) for b in iter_token_batches(calib_batches, batch_size)]
    with torch.no_grad():
        calibrate_input_ranges(view, InputRangeCalibrationType.CACHE_QUANTILE, iter(batches), quantile=quantile)
    for m in model.modules():
        if isinstance(m, AnalogMatrix):
            m.invalidate_cache()  # the fast forward caches tile settings
    return len(list(view.named_analog_tiles()))
