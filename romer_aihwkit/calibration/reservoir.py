"""Bounded-memory row sampling for calibration statistics."""

from __future__ import annotations

import torch

__all__ = ["RowReservoir"]


class RowReservoir:
    """Uniform sample of at most ``capacity`` rows from a stream (reservoir sampling, algorithm R).

    Exact (keeps every row) while the stream is no longer than ``capacity``; memory never grows
    past ``capacity x width`` floats however many calibration tokens flow through.
    """

    def __init__(self, capacity: int, width: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.rows = torch.empty(0, width)
        self.seen = 0
        self._generator = torch.Generator().manual_seed(seed)

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.detach().float().cpu()
        n = batch.shape[0]
        free = self.capacity - self.rows.shape[0]
        if free > 0:
            take = batch[:free]
            self.rows = torch.cat([self.rows, take]) if self.rows.numel() else take.clone()
            self.seen += take.shape[0]
            batch = batch[free:]
            n = batch.shape[0]
        if n == 0:
            return
        index = torch.arange(self.seen, self.seen + n, dtype=torch.float64)
        draws = (torch.rand(n, generator=self._generator, dtype=torch.float64) * (index + 1)).floor().long()
        accepted = draws < self.capacity
        self.seen += n
        if not bool(accepted.any()):
            return
        slots = draws[accepted]
        rows = torch.nonzero(accepted).squeeze(1)
        # sequential semantics: when several rows land in one slot, the last one wins
        last = torch.full((self.capacity,), -1, dtype=torch.long).scatter_reduce(0, slots, rows, "amax")
        hit = last >= 0
        self.rows[hit] = batch[last[hit]]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()
