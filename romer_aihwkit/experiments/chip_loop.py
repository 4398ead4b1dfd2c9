"""The per-chip loop every Monte-Carlo protocol runs: planned rows, computed once, appended at once.

A protocol (:func:`~romer_aihwkit.experiments.runner.run_comparison`,
:func:`~romer_aihwkit.experiments.diagnose.diagnose`) plans the keys of its rows, one or more per
chip instance, and hands :meth:`ChipLoop.run` a function that computes the row of a key (convert,
program with the chip seed, measure). The loop gives it:

* **resume**: rows already in the folder (``rows*.jsonl``, every process's file) are skipped; each
  new row is appended and ``fsync``-ed at once, and a last line torn by a kill is cut before
  appending, so an interrupted run continues where it stopped;
* **a lock**: :func:`chip_folder` holds the output folder's lock and ownership marker
  (:func:`romer_aihwkit.outputs.output_folder`) on rank 0 for the whole run;
* **sharding**: :func:`shard` deals chip instances round-robin over the processes of a
  multi-process launch (:func:`~romer_aihwkit.evaluation.distributed.process_context`); each writes
  ``rows.rank{N}.jsonl`` and every process reads the merged rows after :meth:`ChipLoop.rows`;
* **typed rows**: rows are records with ``key`` and ``to_dict()``
  (:class:`~romer_aihwkit.evaluation.records.Record`), read back with their ``from_dict``.

Without a folder (``out_dir=None``) the same loop keeps the rows in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import ResultsFolderError
from ..evaluation.distributed import ProcessContext, process_context
from ..evaluation.records import Record, load_rows
from ..outputs import output_folder

__all__ = ["ROW_FILE", "ChipLoop", "ShardsPendingError", "chip_folder", "clear_rows", "drop_torn_tail", "process",
           "shard"]

ROW_FILE = "rows.jsonl"
"""The rows of a single-process run (a process of a multi-process run writes ``rows.rank{N}.jsonl``)."""



class ShardsPendingError(ResultsFolderError):
    """A sharded run's folder lacks rows of other processes (run without a launcher that waits for them)."""


T = TypeVar("T")
R = TypeVar("R", bound=Record)


def process(rank: int | None = None, world_size: int | None = None) -> ProcessContext:
    """This process's rank and world size: the launcher's, or the explicit ``rank``/``world_size``."""
    return process_context() if rank is None else ProcessContext(rank, world_size or 1)


def shard(instances: Sequence[T], rank: int = 0, world_size: int = 1) -> list[T]:
    """The chip instances process ``rank`` of ``world_size`` computes: every ``world_size``-th, round-robin."""
    return [x for i, x in enumerate(instances) if i % world_size == rank]


@contextmanager
def chip_folder(out_dir: str | os.PathLike, command: str, force: bool, ctx: ProcessContext) -> Iterator[Path]:
    """The locked, claimed output folder of a run (the lock on rank 0 only; other ranks write their own rows)."""
    with output_folder(out_dir, command, force, lock=ctx.is_main) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def clear_rows(out_dir: Path) -> None:
    """Remove every process's rows (a run that starts again)."""
    for p in out_dir.glob("rows*.jsonl"):
        p.unlink()


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a killed run, so that appended rows start on a new line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class ChipLoop(Generic[R]):
    """One process's share of the rows of a run, in a folder (or in memory without one).

    Args:
        out_dir: The (already checked and locked) folder; ``None`` keeps the rows in memory.
        ctx: This process (:func:`process`).
        parse: Reads a row back from its dict (``Record.from_dict(data, where)``).

    Opening reads the finished rows of every process, so call it after rank 0 has checked (and
    possibly cleared) the folder and the processes have synchronised.
    """

    def __init__(self, out_dir: Path | None, ctx: ProcessContext, parse: Callable[[Any, str], R]) -> None:
        self.out_dir, self.ctx, self.parse = out_dir, ctx, parse
        self._memory: list[R] = []
        self.path: Path | None = None
        if out_dir is not None:
            self.path = out_dir / (ROW_FILE if ctx.world_size == 1 else f"rows.rank{ctx.rank}.jsonl")
            drop_torn_tail(self.path)
        self.done: set[tuple] = {self._key(r) for r in self.rows()}

    @staticmethod
    def _key(row: Any) -> tuple:
        return tuple(row.key)

    def todo(self, keys: Iterable[tuple]) -> list[tuple]:
        """The keys of ``keys`` without a finished row, in order."""
        return [k for k in keys if k not in self.done]

    def append(self, row: R) -> None:
        """Record a finished row (appended to this process's file and synced at once)."""
        key = self._key(row)
        if self.path is None:
            self._memory.append(row)
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(row.to_dict()) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self.done.add(key)

    def run(self, keys: Iterable[tuple], compute: Callable[[tuple], R],
            on_row: Callable[[R], Any] | None = None) -> list[R]:
        """Compute and append the row of every key of ``keys`` that has none yet; returns the new rows."""
        new = []
        for key in self.todo(keys):
            row = compute(key)
            if self._key(row) != tuple(key):
                raise RuntimeError(f"the row computed for {key} is keyed {self._key(row)}")
            self.append(row)
            new.append(row)
            if on_row is not None:
                on_row(row)
        return new

    def rows(self) -> list[R]:
        """Every finished row: of every process's file (or in memory)."""
        if self.out_dir is None:
            return list(self._memory)
        return load_rows(self.out_dir, self.parse)

    def require(self, keys: Iterable[tuple]) -> None:
        """Check that every key of ``keys`` has a finished row (of any process).

        Raises:
            ShardsPendingError: Rows are missing in a sharded run (other processes have not finished;
                their rows are kept, and a rerun once they have assembles the result).
            RuntimeError: Rows are missing in a single-process run (a bug).
        """
        missing = self.todo(keys)
        if not missing:
            return
        if self.ctx.world_size > 1:
            raise ShardsPendingError(
                f"{len(missing)} rows of other processes are not in {self.out_dir} yet (this is process "
                f"{self.ctx.rank} of {self.ctx.world_size}); its own rows are written: rerun once every process "
                "has finished to assemble the result")
        raise RuntimeError(f"rows missing after the run: {missing[:3]}")

    def wait(self) -> None:
        """Wait until every process reached this point (its rows are on disk)."""
        self.ctx.wait_for_everyone()
