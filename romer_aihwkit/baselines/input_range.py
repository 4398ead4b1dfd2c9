"""Static input ranges calibrated from data (AIHWKit ``calibrate_input_ranges``) as a callback-free step.

Two ways of choosing each tile's range ``r`` (inputs are clipped to ``[-r, r]`` and divided by ``r``
before the DAC, with noise management off):

* AIHWKit's ``CACHE_QUANTILE`` (method ``input-range``): the ``quantile`` of all cached input
  *entries* of the tile. Where a few hidden channels are outliers, most entries are ordinary, so
  the range lands below the outliers and clips them on every token.
* per-token percentile (method ``input-range-pct``, ours): the ``percentile`` over calibration
  tokens of each token's abs-max over the tile's input slice. A token's abs-max includes its
  outlier channels, so outlier channels are not clipped (except on the ``100 - percentile`` %
  largest tokens); the price is a coarser DAC step for the ordinary channels, which is what
  ``smooth`` attacks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["calibrate_static_input_ranges"]


def calibrate_static_input_ranges(model: nn.Module, calib_batches, batch_size: int = 8, quantile: float = 0.99995,
                                  percentile: float | None = None, max_rows: int = 20000) -> int:
    """Set every analog tile's DAC input range from the calibration data.

    Uses AIHWKit's own post-training calibration (``CACHE_QUANTILE``) over all tiles of the
    converted model (the tiles' forward is ideal during the pass, as in AIHWKit). With
    ``percentile`` the range of each tile is instead the ``percentile`` (0-100] of the per-token
    abs-max of its input slice, over at most ``max_rows`` sampled tokens per tile (see the module
    docstring). Returns the number of tiles calibrated.
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
    if percentile is not None and not 0.0 < float(percentile) <= 100.0:
        raise InputError(f"input-range percentile must be in (0, 100], got {percentile}")
    peaks: dict[int, list[torch.Tensor]] = {}
    handles = []
    if percentile is not None:
        generator = torch.Generator().manual_seed(0)

        def record(tile, args) -> None:
            x = args[0].detach()
            a = x.reshape(-1, x.shape[-1]).abs().amax(dim=-1).float().cpu()
            a = a[a > 0]
            rows = peaks.setdefault(id(tile), [])
            rows.append(a)
            if sum(r.numel() for r in rows) > 2 * max_rows:
                merged = torch.cat(rows)
                rows[:] = [merged[torch.randperm(merged.numel(), generator=generator)[:max_rows]]]

        handles = [tile.register_forward_pre_hook(record) for _, tile in view.named_analog_tiles()]
    try:
        with torch.no_grad():
            calibrate_input_ranges(view, InputRangeCalibrationType.CACHE_QUANTILE, iter(batches), quantile=quantile)
    finally:
        for h in handles:
            h.remove()
    if percentile is not None:
        for _, tile in view.named_analog_tiles():
            rows = peaks.get(id(tile))
            if not rows or sum(r.numel() for r in rows) == 0:
                continue  # a tile no calibration token reached (a cold expert) keeps AIHWKit's range
            tile.set_input_range(float(torch.quantile(torch.cat(rows)[:max_rows].double(), float(percentile) / 100.0)))
            tile.rpu_config.pre_post.input_range.init_value = tile.input_range.item()
    for m in model.modules():
        if isinstance(m, AnalogMatrix):
            m.invalidate_cache()  # the fast forward caches tile settings
    return len(list(view.named_analog_tiles()))
