"""Tokenization of text sources into fixed blocks, and normalisation of "batches"."""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .corpus import BUNDLED_SPLITS, read_bundled_documents

__all__ = ["count_tokens", "encode_documents", "iter_model_batches", "iter_token_batches", "text_blocks",
           "vocab_size_of"]

_BUNDLED_NAMES = ("bundled", "shakespeare")


def _read_text_file(path: Path) -> str:
    """The text of a .txt / .txt.gz file; binary or non-UTF-8 content is an error naming the file."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"cannot read text file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"text file {path} is not UTF-8 text (invalid byte at offset {exc.start}); "
                         "pass a UTF-8 .txt/.txt.gz file") from None
    if "\x00" in text:
        raise InputError(f"text file {path} holds NUL bytes: it looks binary, not text")
    return text


def _is_saved_dataset_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _dataset_documents(ds: Any, split: str, text_column: str = "text") -> list[str]:
    """Text of a ``datasets.Dataset``/``DatasetDict``: rows joined with blank lines (as WikiText)."""
    if hasattr(ds, "column_names") and not isinstance(ds.column_names, Mapping):
        dataset = ds  # a single Dataset
    elif isinstance(ds, Mapping):  # DatasetDict
        if split not in ds:
            raise InputError(f"unknown split {split!r} for this dataset; valid splits: {', '.join(ds.keys())}")
        dataset = ds[split]
    else:
        raise TypeError(f"not a datasets.Dataset or DatasetDict: {type(ds).__name__}")
    if text_column not in dataset.column_names:
        raise InputError(f"dataset has no {text_column!r} column; columns: {dataset.column_names}")
    return ["\n\n".join(dataset[text_column])]


def _documents(source: Any, split: str) -> tuple[list[str], str]:
    """Resolve ``source`` into a list of documents and a short description."""
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source.lower() in _BUNDLED_NAMES:
            if split not in BUNDLED_SPLITS:
                raise InputError(
                    f"unknown split {split!r} for the bundled corpus; valid splits: {', '.join(BUNDLED_SPLITS)}"
                )
            return read_bundled_documents(split), f"bundled corpus, split {split!r}"
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"text source not found: {str(path)!r} (expected 'bundled', a .txt/.txt.gz file, "
                "a folder of .txt files or a dataset folder saved with save_to_disk)"
            )
        if path.is_file():
            return [_read_text_file(path)], str(path)
        if _is_saved_dataset_dir(path):
            try:
                import datasets
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(f"{path} looks like a saved dataset; install `datasets` to read it") from e
            return _dataset_documents(datasets.load_from_disk(str(path)), split), f"dataset {path}"
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.name.endswith(".txt") or p.name.endswith(".txt.gz")))
        if not files:
            raise FileNotFoundError(f"no .txt or .txt.gz files in folder {str(path)!r}")
        return [_read_text_file(p) for p in files], f"{len(files)} files in {path}"
    if isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        return list(source), f"{len(source)} in-memory documents"
    if hasattr(source, "column_names"):
        return _dataset_documents(source, split), f"dataset split {split!r}"
    raise TypeError(
        f"unsupported text source of type {type(source).__name__}: pass 'bundled', a path to a "
        ".txt/.txt.gz file or folder, a list of strings, or a datasets.Dataset/DatasetDict"
    )


def encode_documents(documents: list[str], tokenizer: Any) -> list[int]:
    """Token ids of ``documents``, concatenated with the tokenizer's EOS id between documents."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encs = backend.encode_batch(documents, add_special_tokens=False)
        id_lists = [e.ids for e in encs]
    else:
        id_lists = [list(tokenizer.encode(d, add_special_tokens=False)) for d in documents]
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for i, part in enumerate(id_lists):
        if i and eos is not None:
            ids.append(int(eos))
        ids.extend(part)
    return ids


def text_blocks(
    source: Any = "bundled",
    tokenizer: Any = None,
    seq_len: int = 256,
    split: str = "test",
    max_blocks: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """Tokenize a text source into fixed blocks of ``seq_len`` tokens: LongTensor ``[N, seq_len]``.

    ``source``:
      * ``"bundled"`` / ``"shakespeare"``: the bundled corpus, split ``split`` ("train",
        "validation", "test"). The splits are different plays, so the bundled calibration set
        (``"validation"``) and evaluation set (``"test"``) are disjoint by construction;
      * a path to a ``.txt`` / ``.txt.gz`` file;
      * a folder of ``.txt`` / ``.txt.gz`` files (sorted by name, EOS between documents);
      * a ``datasets.Dataset`` / ``DatasetDict`` or a folder saved with ``save_to_disk`` (column
        ``text``; a DatasetDict uses ``split``; rows are joined with blank lines, as is usual for
        WikiText perplexity);
      * a list of strings (documents, EOS between them).

    ``tokenizer`` defaults to the bundled tokenizer. Blocks do not overlap unless ``stride`` is
    given (block ``i`` starts at token ``i * stride``); the ragged tail is dropped. ``max_blocks``
    keeps the first blocks only.
    """
    if seq_len < 1:
        raise InputError(f"seq_len must be >= 1, got {seq_len}")
    if stride is None:
        stride = seq_len
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    if max_blocks is not None and max_blocks < 1:
        raise InputError(f"max_blocks must be >= 1 or None, got {max_blocks}")
    if tokenizer is None:
        from ..models import bundled_tokenizer

        tokenizer = bundled_tokenizer()
    docs, what = _documents(source, split)
    ids = encode_documents(docs, tokenizer)
    n = len(ids)
    if n < seq_len:
        raise InputError(
            f"text from {what} is too short: it has {n} tokens, one block needs seq_len={seq_len} tokens"
        )
    n_blocks = (n - seq_len) // stride + 1
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    t = torch.tensor(ids[: (n_blocks - 1) * stride + seq_len], dtype=torch.long)
    return t.unfold(0, seq_len, stride)[:n_blocks].contiguous()


def _as_2d(x: Any, where: str) -> torch.Tensor:
    if isinstance(x, Mapping):
        if "input_ids" not in x:
            raise InputError(f"{where}: a dict batch must have 'input_ids'; it has keys {sorted(x)}")
        x = x["input_ids"]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{where}: expected a LongTensor [B, L] or [L] or a dict with 'input_ids', got {type(x).__name__}"
        )
    if x.dtype not in (torch.long, torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{where}: token ids must be an integer tensor, got dtype {x.dtype}")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise InputError(f"{where}: expected shape [B, L] or [L], got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{where}: empty batch of shape {tuple(x.shape)}")
    return x.long()


def iter_token_batches(batches: Any, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Yield LongTensor batches ``[B, L]`` from what the public API accepts as ``batches``.

    Accepted: a LongTensor ``[N, L]`` (split into chunks of ``batch_size`` rows; all rows at once
    when ``batch_size`` is None), a dict with ``input_ids``, or any iterable of LongTensors
    ``[B, L]`` / ``[L]`` or of dicts with ``input_ids`` (each item is one batch; ``batch_size``
    is ignored for those). Raises ``TypeError`` for other types and ``ValueError`` for an empty set.
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1 or None, got {batch_size}")
    if isinstance(batches, (torch.Tensor, Mapping)):
        t = _as_2d(batches, "batches")
        bs = batch_size or t.shape[0]
        for i in range(0, t.shape[0], bs):
            yield t[i : i + bs]
        return
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be a LongTensor [N, L], or an iterable of LongTensors [B, L]/[L] or of dicts "
            f"with 'input_ids'; got {type(batches).__name__}"
        )
    n = 0
    for i, item in enumerate(batches):
        yield _as_2d(item, f"batch {i}")
        n += 1
    if n == 0:
        raise InputError("batches is empty: no token blocks to process")


def vocab_size_of(model: Any) -> int | None:
    """Rows of the model's input embedding (the largest token id + 1 it accepts), if known."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def iter_model_batches(model: Any, batches: Any, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """:func:`iter_token_batches`, checking each batch's token ids against ``model``'s vocabulary.

    The one place where token batches meet a model (perplexity, routing statistics, calibration).

    Raises:
        InputError: A token id below 0 or not below the model's vocabulary size (names the batch,
            the id and the vocabulary size).
    """
    vocab = vocab_size_of(model)
    for i, batch in enumerate(iter_token_batches(batches, batch_size)):
        if vocab is not None and batch.numel():
            low, high = int(batch.min()), int(batch.max())
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise InputError(f"batch {i}: token id {bad} is outside the model's vocabulary (ids 0..{vocab - 1}); "
                                 "were the blocks made with this model's tokenizer?")
        yield batch


def count_tokens(batches: Any) -> int:
    """Total number of tokens in ``batches`` (any form accepted by :func:`iter_token_batches`)."""
    return sum(int(b.numel()) for b in iter_token_batches(batches))
