"""Measures shared by calibration and evaluation: next-token NLL / perplexity and per-layer load balance.

A neutral module below both :mod:`romer_aihwkit.calibration` (ROMER's held-out selection and
per-layer report) and :mod:`romer_aihwkit.evaluation` (which re-exports these), so neither imports
the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .data.blocks import iter_model_batches

__all__ = ["layer_metrics", "perplexity", "token_nll"]


def layer_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Balance metrics of one layer from its per-expert selection counts."""
    total = float(counts.sum())
    e = counts.numel()
    if total == 0:
        return {"load_cv": float("nan"), "max_load_ratio": float("nan"), "load_entropy": float("nan")}
    load = counts.double() / total
    nz = load[load > 0]
    return {
        "load_cv": float(load.std(unbiased=False) / load.mean()),
        "max_load_ratio": float(load.max() * e),
        "load_entropy": float(-(nz * nz.log()).sum() / math.log(e)) if e > 1 else 1.0,
    }


def _model_device(model: torch.nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _n_blocks(batches: Any, batch_size: int) -> int | None:
    if isinstance(batches, torch.Tensor):
        rows = batches.shape[0] if batches.dim() == 2 else 1
        return math.ceil(rows / batch_size)
    if isinstance(batches, Mapping):
        ids = batches.get("input_ids")
        return _n_blocks(ids, batch_size) if isinstance(ids, torch.Tensor) else None
    try:
        return len(batches)
    except TypeError:
        return None


def token_nll(model: torch.nn.Module, batches: Any, batch_size: int = 8, progress: bool = True,
              device: Any = None, desc: str = "perplexity") -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods and number of predicted tokens (see :func:`perplexity`)."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tok = 0
    try:
        with torch.no_grad():
            it = iter_model_batches(model, batches, batch_size=batch_size)
            for i, ids in enumerate(tqdm(it, total=_n_blocks(batches, batch_size), desc=desc,
                                         disable=not progress, leave=False)):
                if ids.shape[1] < 2:
                    raise ValueError(f"batch {i}: blocks need at least 2 tokens to predict one, got {ids.shape[1]}")
                ids = ids.to(device)
                logits = model(input_ids=ids, use_cache=False).logits
                logits = logits[:, :-1].float()
                if not torch.isfinite(logits).all():
                    bad = (~torch.isfinite(logits)).sum().item()
                    raise ValueError(f"batch {i}: model logits contain {bad} NaN/inf values")
                targets = ids[:, 1:]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
                total_nll += float(nll)
                total_tok += targets.numel()
    finally:
        model.train(was_training)
    return total_nll, total_tok


def perplexity(model: torch.nn.Module, batches: Any, batch_size: int = 8, progress: bool = True,
               device: Any = None) -> float:
    """Perplexity: ``exp(sum of next-token NLL / number of predicted tokens)`` over all blocks.

    ``batches``: a LongTensor ``[N, L]`` of token blocks (split into ``batch_size`` rows), or an
    iterable of LongTensors / dicts with ``input_ids`` (each item used as one batch). The model
    runs in eval mode under ``torch.no_grad()`` on ``device`` (default: the model's device).
    Raises ``ValueError`` if the logits of a batch contain NaN or inf.
    """
    nll, n = token_nll(model, batches, batch_size=batch_size, progress=progress, device=device)
    return math.exp(nll / n)
