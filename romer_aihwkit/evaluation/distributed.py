"""Sharding chip instances over processes with ``accelerate`` (or any torch.distributed launcher).

``accelerate launch --multi_gpu --num_processes N -m romer_aihwkit.cli compare ...`` (on GPUs, or
on CPUs: accelerate then uses the gloo backend) starts N processes; each evaluates every N-th
chip instance and appends its rows to its own file; rank 0 waits for all, merges, and writes the
results exactly as a single process would (every random draw is seeded per chip instance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ProcessContext", "process_context"]


@dataclass
class ProcessContext:
    rank: int = 0
    world_size: int = 1
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        if self._state is not None and self.world_size > 1:
            self._state.wait_for_everyone()


def process_context() -> ProcessContext:
    """Rank and world size of this process; single-process when not launched distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessContext()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return ProcessContext(rank=state.process_index, world_size=state.num_processes, _state=state)
