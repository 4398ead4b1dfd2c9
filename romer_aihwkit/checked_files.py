"""Checked readers and content digests for the files this package reads and writes.

:func:`read_json` and :func:`read_safetensors` turn a missing, truncated or corrupted file into an
:class:`~romer_aihwkit.errors.ArtifactError` that names the file. :func:`check_fingerprint`
compares a saved artifact's fingerprint with the model it is loaded onto (the fingerprint itself,
which reads a converted model, is :func:`romer_aihwkit.analog.fingerprint.fingerprint`).
:func:`content_digest` hashes input files and folders, :func:`code_fingerprint` the simulation code.

This module knows nothing of models or chips: it sits in the bottom layer, next to
:mod:`romer_aihwkit.errors`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError, FingerprintMismatchError

if TYPE_CHECKING:
    import torch

__all__ = [
    "FINGERPRINT_FIELDS",
    "check_fingerprint",
    "code_fingerprint",
    "content_digest",
    "read_json",
    "read_safetensors",
]

FINGERPRINT_FIELDS = ("architecture", "weights", "device", "seed", "t_inference", "analog", "engine")
"""The fields :func:`check_fingerprint` compares, in the order it reports them."""


def check_fingerprint(saved: Mapping[str, Any] | None, current: Mapping[str, Any], path: str | os.PathLike,
                      fields: tuple[str, ...] = FINGERPRINT_FIELDS) -> None:
    """Raise unless ``saved`` and ``current`` agree on every field in ``fields``.

    Args:
        saved: The fingerprint stored with the artifact (``None``: the artifact has none).
        current: :func:`~romer_aihwkit.analog.fingerprint.fingerprint` of the model it is being loaded onto.
        path: The artifact file, named in the error.
        fields: Which fields to compare.

    Raises:
        ArtifactError: ``saved`` is missing or not a mapping (an artifact from an older version).
        FingerprintMismatchError: Some fields differ; the message lists each with both values.
    """
    if not isinstance(saved, Mapping):
        raise ArtifactError(Path(path), "has no fingerprint of the model and chip instance it belongs to (written by an "
                                  "older version, or edited); recompute it")
    differences = [(name, saved.get(name), current.get(name)) for name in fields
                   if _normal(saved.get(name)) != _normal(current.get(name))]
    if differences:
        raise FingerprintMismatchError(Path(path), differences)


def _normal(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _normal(v) for k, v in value.items()}
    return value


def read_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """Read a JSON object from ``path``; every failure names the file.

    Args:
        path: The file.
        what: What the file is, for messages (e.g. ``"calibration metadata"``).

    Raises:
        FileNotFoundError: There is no such file.
        ArtifactError: Unreadable, not UTF-8, truncated or not JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(path, f"{what} is not UTF-8 text (byte {exc.start}); the file is corrupted") from None
    except OSError as exc:
        raise ArtifactError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(path, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                                  "the file is truncated or corrupted") from None
    if not isinstance(data, dict):
        raise ArtifactError(path, f"{what} must hold a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file; every failure names the file.

    Args:
        path: The file.
        what: What the file is, for messages.

    Returns:
        ``(tensors, metadata)`` (tensors on the CPU).

    Raises:
        FileNotFoundError: There is no such file.
        ArtifactError: Truncated, corrupted or not a safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError or ValueError
        detail = " ".join(str(exc).split())[:200]
        raise ArtifactError(path, f"{what} is not a readable safetensors file (truncated or corrupted: {detail})") from None
    return tensors, metadata


# ------------------------------------------------------------------ content digests of input files
_SAMPLED_ABOVE = 8 * 2**20  # files larger than this are hashed from 16 sampled blocks plus their size
_BLOCK = 64 * 1024


def _file_digest(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"|{size}|".encode())
    with open(path, "rb") as f:
        if size <= _SAMPLED_ABOVE:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return
        for i in range(16):
            f.seek(i * (size - _BLOCK) // 15)
            digest.update(f.read(_BLOCK))


def content_digest(root: str | os.PathLike) -> str:
    """Hash of a file's or a folder's contents (bytes, and the relative names of a folder's files; for a
    single file its suffixes, which decide how it is read, e.g. ``.txt.gz``; never its location).

    Files up to 8 MiB are hashed whole; larger ones (weights) from their size and 16 sampled
    64 KiB blocks.

    Returns:
        16 hex digits.
    """
    root = Path(root)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        digest.update(str(p.relative_to(root) if p != root else "".join(p.suffixes)).encode())
        _file_digest(p, digest)
    return digest.hexdigest()[:16]


_NOT_NUMERICS = ("cli/", "evaluation/report.py", "evaluation/plots.py")
"""Package sources that only present results (their changes do not change a number)."""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Identity of the code that computes the numbers: the package's sources and library versions.

    The package's Python sources (docstrings and comments aside, so editing prose keeps it; the
    command line and the report/plot writers aside) are hashed with the versions of
    romer-aihwkit, AIHWKit, torch and transformers. A resumed comparison must have the same.

    Returns:
        ``"<16 hex digits> (romer-aihwkit V, aihwkit V, torch V, transformers V)"``.
    """
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(_NOT_NUMERICS) or "bundled" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                body[0] = ast.Pass()  # a docstring
        digest.update(rel.encode() + b"|" + ast.dump(tree).encode())
    versions = []
    for package in ("romer-aihwkit", "aihwkit", "torch", "transformers"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return f"{digest.hexdigest()[:16]} ({', '.join(versions)})"
