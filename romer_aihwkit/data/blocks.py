"""Tokenization of text sources into fixed blocks, and normalisation of "batches"."""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..models import bundled_tokenizer
from .corpus import BUNDLED_SPLITS, bundled_text_path, read_bundled_documents

__all__ = ["MAX_TEXT_BYTES", "count_tokens", "encode_documents", "iter_model_batches", "iter_token_batches",
           "max_positions_of", "max_text_bytes", "same_text", "text_blocks", "text_size_limit", "vocab_size_of"]

_BUNDLED_NAMES = ("bundled", "shakespeare")


MAX_TEXT_BYTES = 256 * 2**20
"""Default limit on the text read from one source (a file, or a folder's files together), counted
after decompression: 256 MiB. ``text_blocks(..., max_text_bytes=N)``, :func:`text_size_limit` and
the CLI's ``--max-text-size`` raise or lower it. A ``.txt.gz`` is decompressed as a stream and
refused as soon as it passes the limit, so a small file that expands to gigabytes is never held whole."""

_TEXT_LIMIT: ContextVar[int | None] = ContextVar("romer_aihwkit_text_limit", default=None)
_CHUNK = 2**20


def max_text_bytes() -> int:
    """The limit in force: :func:`text_size_limit`'s, else :data:`MAX_TEXT_BYTES`."""
    override = _TEXT_LIMIT.get()
    return MAX_TEXT_BYTES if override is None else override


@contextmanager
def text_size_limit(max_bytes: int | None) -> Iterator[None]:
    """Within the block, text sources may hold up to ``max_bytes`` bytes of (decompressed) text
    (``None``: the default :data:`MAX_TEXT_BYTES`)."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise InputError(f"the text size limit must be a positive number of bytes, got {max_bytes!r}")
    token = _TEXT_LIMIT.set(max_bytes)
    try:
        yield
    finally:
        _TEXT_LIMIT.reset(token)


class _TextTooLarge(InputError):
    """A text source over the size limit."""


def _too_large(path: Path, limit: int, size: str) -> InputError:
    return _TextTooLarge(f"text file {path} holds {size} bytes of text, more than the limit of {limit} bytes "
                      f"(max_text_bytes; --max-text-size on the command line); raise the limit if this is intended")


def _iter_file_bytes(path: Path, limit: int) -> Iterator[bytes]:
    """The (decompressed) bytes of ``path`` in chunks, refusing more than ``limit`` bytes in all."""
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
        if size > limit:
            raise _too_large(path, limit, str(size))
    total = 0
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(min(_CHUNK, limit + 1 - total))
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                raise _too_large(path, limit, f"more than {limit}")
            yield chunk


def _read_text_file(path: Path, limit: int | None = None) -> str:
    """The text of a .txt / .txt.gz file; binary or non-UTF-8 content is an error naming the file.

    At most ``limit`` bytes (default: :func:`max_text_bytes`) of decompressed text are read."""
    limit = max_text_bytes() if limit is None else limit
    try:
        raw = b"".join(_iter_file_bytes(path, limit))
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


def _content_digest(source: str, split: str) -> str | None:
    """sha256 of a text source's decompressed text (files in name order); ``None`` when it is not a
    bundled split, a file or a folder of text files, or when reading it fails or exceeds the size limit."""
    import hashlib

    digest = hashlib.sha256()
    if source.lower() in _BUNDLED_NAMES:
        if split not in BUNDLED_SPLITS:
            return None

        files = [bundled_text_path(split)]
    else:
        path = Path(source).expanduser()
        if path.is_file():
            files = [path]
        elif path.is_dir() and not _is_saved_dataset_dir(path):
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".txt", ".txt.gz")))
        else:
            return None
    try:
        for p in files:
            digest.update(b"\x00file\x00")
            for chunk in _iter_file_bytes(p, max_text_bytes()):
                digest.update(chunk)
    except (OSError, EOFError, InputError):
        return None
    return digest.hexdigest()


def same_text(a: str, b: str, split_a: str = "test", split_b: str = "validation") -> str | None:
    """Whether two text sources hold the same text: ``"the same file"``, ``"identical content"`` or ``None``.

    Used to flag a calibration text that is the evaluation text (calibrated methods would look better
    than they are), whether given as the same path or as a copy. ``split_a``/``split_b`` are the
    bundled splits meant when a source is ``"bundled"``.
    """
    a, b = str(a), str(b)
    bundled_a, bundled_b = a.lower() in _BUNDLED_NAMES, b.lower() in _BUNDLED_NAMES
    if bundled_a and bundled_b:
        return "the same file" if split_a == split_b else None
    if not bundled_a and not bundled_b:
        try:
            pa, pb = Path(a).expanduser(), Path(b).expanduser()
            if pa.exists() and pa.resolve() == pb.resolve():
                return "the same file"
        except OSError:
            return None
    da, db = _content_digest(a, split_a), _content_digest(b, split_b)
    return "identical content" if da is not None and da == db else None


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


def _documents(source: Any, split: str, limit: int | None = None) -> tuple[list[str], str]:
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
        limit = max_text_bytes() if limit is None else limit
        if path.is_file():
            return [_read_text_file(path, limit)], str(path)
        if _is_saved_dataset_dir(path):
            try:
                import datasets
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(f"{path} looks like a saved dataset; install `datasets` to read it") from e
            return _dataset_documents(datasets.load_from_disk(str(path)), split), f"dataset {path}"
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.name.endswith(".txt") or p.name.endswith(".txt.gz")))
        if not files:
            raise FileNotFoundError(f"no .txt or .txt.gz files in folder {str(path)!r}")
        documents, used = [], 0
        for p in files:
            try:
                text = _read_text_file(p, limit - used)
            except _TextTooLarge:
                raise InputError(f"the text files in folder {path} hold more than the limit of {limit} bytes of text "
                                 "(max_text_bytes; --max-text-size on the command line); raise the limit if this "
                                 "is intended") from None
            used += len(text.encode("utf-8"))
            documents.append(text)
        return documents, f"{len(files)} files in {path}"
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
    max_text_bytes: int | None = None,
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
    keeps the first blocks only (fewer when the text has fewer: compare ``len(result)``).

    ``max_text_bytes`` limits the text read from a file or folder, after decompression (default
    :data:`MAX_TEXT_BYTES`, 256 MiB, or :func:`text_size_limit`'s); a larger source is an
    ``InputError`` naming the limit.
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
        tokenizer = bundled_tokenizer()
    if max_text_bytes is not None and (isinstance(max_text_bytes, bool) or not isinstance(max_text_bytes, int)
                                       or max_text_bytes < 1):
        raise InputError(f"max_text_bytes must be a positive number of bytes, got {max_text_bytes!r}")
    docs, what = _documents(source, split, max_text_bytes)
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


def max_positions_of(model: Any) -> int | None:
    """The most token positions the model's config declares (``max_position_embeddings`` or
    ``n_positions``), if any."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def iter_model_batches(model: Any, batches: Any, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """:func:`iter_token_batches`, checking each batch's token ids against ``model``'s vocabulary.

    The one place where token batches meet a model (perplexity, routing statistics, calibration).

    Raises:
        InputError: A token id below 0 or not below the model's vocabulary size (names the batch,
            the id and the vocabulary size), or blocks longer than the positions the model declares
            (``max_position_embeddings``; a longer block would run silently on positions the model
            was never trained for).
    """
    vocab = vocab_size_of(model)
    positions = max_positions_of(model)
    for i, batch in enumerate(iter_token_batches(batches, batch_size)):
        if positions is not None and batch.shape[1] > positions:
            raise InputError(f"batch {i}: blocks of {batch.shape[1]} tokens, but the model handles at most {positions} "
                             f"positions (max_position_embeddings); use a sequence length (--seq-len) of at most "
                             f"{positions}")
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
