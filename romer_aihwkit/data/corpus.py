"""The bundled Shakespeare corpus (built by ``scripts/build_corpus.py``).

Three splits, made BY PLAY so they share no text: ``train`` (tokenizer and model training),
``validation`` (the calibration set) and ``test`` (evaluation). ``manifest.json`` lists the
plays of each split and the sha256 of its uncompressed text.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from ..checked_files import content_digest
from ..errors import InputError

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
CORPUS_DIR = BUNDLED_DIR / "corpus"
TOKENIZER_DIR = BUNDLED_DIR / "tokenizer"
BUNDLED_SPLITS = ("train", "validation", "test")
#: The bundled calibration set (for ROMER and other calibrations) and the evaluation set.
CALIBRATION_SPLIT = "validation"
EVALUATION_SPLIT = "test"


def _check_split(split: str) -> str:
    if split not in BUNDLED_SPLITS:
        raise InputError(
            f"unknown split {split!r} for the bundled corpus; valid splits: {', '.join(BUNDLED_SPLITS)}"
        )
    return split


@lru_cache(maxsize=1)
def bundled_manifest() -> dict:
    """The corpus manifest: plays per split, byte counts and sha256 of each split's text."""
    path = CORPUS_DIR / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"bundled corpus manifest not found: {path} (run scripts/build_corpus.py)")
    return json.loads(path.read_text(encoding="utf-8"))


def bundled_text_path(split: str = "test") -> Path:
    """Path of the gzip file holding bundled split ``split`` ("train", "validation", "test")."""
    path = CORPUS_DIR / f"{_check_split(split)}.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"bundled corpus file not found: {path} (run scripts/build_corpus.py)")
    return path


@lru_cache(maxsize=3)
def read_bundled_text(split: str = "test") -> str:
    """The uncompressed text of a bundled split (plays separated by four blank lines)."""
    with gzip.open(bundled_text_path(split), "rt", encoding="utf-8", newline="") as f:
        return f.read()


def read_bundled_documents(split: str = "test") -> list[str]:
    """The plays of a bundled split, one string per play (in manifest order)."""
    sep = bundled_manifest().get("play_separator", "\n\n\n\n\n")
    return [d.strip("\n") + "\n" for d in read_bundled_text(split).split(sep) if d.strip()]


def text_digest(source: str) -> str:
    """Content hash of a text source: ``"bundled"`` (the bundled corpus), a file or a folder (``"missing"``)."""
    if str(source).lower() in ("bundled", "shakespeare"):
        return content_digest(CORPUS_DIR)
    path = Path(source).expanduser()
    if not path.exists():
        return "missing"
    return content_digest(path)
