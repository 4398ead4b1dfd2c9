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

from ..analog.bank import TileHolder
from ..compat import aihwkit as _aihwkit
from ..data import iter_token_batches
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

    device = next(model.parameters()).device
    batches: list[tuple[tuple[torch.Tensor, ...], dict[str, Any]]] = [
        ((b.to(device),), {}) for b in iter_token_batches(calib_batches, batch_size)]
    if percentile is not None and not 0.0 < float(percentile) <= 100.0:
        raise InputError(f"input-range percentile must be in (0, 100], got {percentile}")
    peaks: dict[int, list[torch.Tensor]] = {}
    record = None
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

    _aihwkit.calibrate_input_ranges(model, batches, quantile, record)
    tiles = _aihwkit.analog_tiles_of_model(model)
    if percentile is not None:
        for tile in tiles:
            rows = peaks.get(id(tile))
            if not rows or sum(r.numel() for r in rows) == 0:
                continue  # a tile no calibration token reached (a cold expert) keeps AIHWKit's range
            _aihwkit.set_tile_input_range(tile, float(torch.quantile(torch.cat(rows)[:max_rows].double(),
                                                                     float(percentile) / 100.0)))
    for m in model.modules():
        if isinstance(m, TileHolder):
            m.invalidate_cache()  # e.g. the fast forward caches tile settings
    return len(tiles)
