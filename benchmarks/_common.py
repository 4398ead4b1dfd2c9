"""Shared helpers of the benchmark scripts (not a test module; run the bench_*.py scripts)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": "cpu",
    }


def models_and_device(names: list[str] | None, device: str, dtype=torch.float32):
    """``([(name, factory)], device_config)``; each factory returns a fresh ``(model, tokenizer)``
    of a bundled model (all of them when ``names`` is empty)."""
    import romer_aihwkit as ra

    chosen = names or ra.list_bundled_models()
    models = [(n, (lambda n=n: ra.load_bundled_model(n, dtype=dtype))) for n in chosen]
    return models, ra.load_device_config(device)


def tokens_for(tokenizer, n_blocks: int, seq_len: int, vocab: int) -> torch.Tensor:
    """Real text blocks (bundled Shakespeare test split) when a tokenizer is there, else random ids."""
    if tokenizer is not None:
        import romer_aihwkit as ra

        blocks = ra.text_blocks("bundled", tokenizer, seq_len=seq_len, split="test", max_blocks=n_blocks)
        if blocks.shape[0] >= n_blocks:
            return blocks[:n_blocks]
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (n_blocks, seq_len), generator=g)


def median_times(fns: dict, repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time (s) of each callable; calls are interleaved round-robin so that load
    changes on a shared machine hit every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def table(title: str, columns: list[str], rows: list[list]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(str(c) for c in r))
        return
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(c) for c in r])
    Console(width=200).print(t)
