"""Shared helpers of the benchmark scripts (not a test module; run the bench_*.py scripts)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models for the fallback


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": "cpu",
    }


def load_models(names: list[str] | None, dtype=torch.float32):
    """``[(name, factory)]``; each factory returns a fresh ``(model, tokenizer or None)``.

    Bundled models when there are any; otherwise tiny random models from tests/tiny_models.py
    scaled up to hidden 128, 8 experts, 4 layers (and the returned note says so).
    """
    import romer_aihwkit as ra

    bundled = ra.list_bundled_models()
    if bundled:
        chosen = names or bundled
        return [(n, (lambda n=n: ra.load_bundled_model(n, dtype=dtype))) for n in chosen], None

    def scaled(family: str):
        import tiny_models

        common = dict(tiny_models.COMMON, hidden_size=128, num_hidden_layers=4, vocab_size=4096,
                      max_position_embeddings=512)
        old = tiny_models.COMMON
        tiny_models.COMMON = common
        try:
            from transformers import OlmoeConfig, OlmoeForCausalLM

            torch.manual_seed(0)
            model = OlmoeForCausalLM(OlmoeConfig(**common, intermediate_size=128, num_experts=8,
                                                 num_experts_per_tok=2)).eval().to(dtype)
        finally:
            tiny_models.COMMON = old
        return model, None

    note = ("no bundled models found: using a random OlmoeForCausalLM (hidden 128, 8 experts, "
            "4 layers) from tests/tiny_models.py settings instead")
    return [("olmoe-random-128", lambda: scaled("olmoe"))], note


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
