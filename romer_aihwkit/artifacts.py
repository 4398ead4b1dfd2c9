"""Fingerprints and checked readers for saved artifacts (calibrations, chip states, results).

Every artifact this package writes carries a *fingerprint* of what it belongs to, and every loader
compares it with the model it is loaded onto before changing anything:

* ``architecture``: model class, config class and ``model_type``;
* ``weights``: a hash of the model's digital weights (names, shapes, dtypes, a deterministic
  strided sample of every tensor, and the full router weights), cheap enough for a 7B model;
* ``device``: a hash of the resolved device-config *content* (every physical field; the name,
  description and source text do not count);
* ``seed``, ``t_inference``: the chip instance;
* ``analog``: which roles are analog (counts per role, from ``analog_summary``);
* ``engine``: the simulation engine of the conversion.

:func:`read_json` and :func:`read_safetensors` turn a missing, truncated or corrupted file into an
:class:`~romer_aihwkit.errors.ArtifactError` that names the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ArtifactError, FingerprintMismatchError

__all__ = [
    "FINGERPRINT_FIELDS",
    "check_fingerprint",
    "code_fingerprint",
    "content_digest",
    "device_fingerprint",
    "fingerprint",
    "model_digest",
    "read_json",
    "read_safetensors",
    "text_digest",
    "weights_hash",
]

FINGERPRINT_FIELDS = ("architecture", "weights", "device", "seed", "t_inference", "analog", "engine")
"""The fields :func:`check_fingerprint` compares, in the order it reports them."""

_SAMPLE = 4096  # elements hashed per tensor (strided over the whole tensor)
_DEVICE_TEXT_FIELDS = ("name", "description", "source")


def device_fingerprint(device_config: Any) -> str:
    """Hash of a device config's content: every field except its name, description and source.

    Args:
        device_config: A :class:`~romer_aihwkit.devices.DeviceConfig`, preset name or YAML path.

    Returns:
        16 hex digits; equal for two configs that simulate the same device.
    """
    from .devices import load_device_config

    data = load_device_config(device_config).to_dict()
    for key in _DEVICE_TEXT_FIELDS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reference_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """``(name, tensor, hash_fully)`` of the model's digital weights, whatever is on the tiles.

    Experts give their *own* weights even while their tiles hold a ROMER replica; routers give their
    digital weight (hashed fully) and correction bias but not their calibration buffers; tile
    internals (programmed, drifted weights) are skipped.
    """
    from .analog.matrix import WeightMatrix
    from .analog.router import AnalogRouter

    done: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in done):
            continue
        if isinstance(module, AnalogRouter):
            yield f"{name}.weight", module.weight, True
            if module.e_score_correction_bias is not None:
                yield f"{name}.e_score_correction_bias", module.e_score_correction_bias, True
            done.append(f"{name}.")
        elif hasattr(module, "own_weights") and hasattr(module, "num_experts"):
            for e in range(int(module.num_experts)):
                for part, tensor in zip(("gate_up", "down"), module.own_weights(e)):
                    yield f"{name}.{e}.{part}", tensor, False
            done.append(f"{name}.")
        elif isinstance(module, WeightMatrix):
            yield f"{name}.weight", module.weight, False
            if module.bias is not None:
                yield f"{name}.bias", module.bias, False
            done.append(f"{name}.")
        else:
            prefix = f"{name}." if name else ""
            for pname, param in module.named_parameters(recurse=False):
                yield prefix + pname, param, False
            skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
            for bname, buf in module.named_buffers(recurse=False):
                if bname not in skip and buf is not None:
                    yield prefix + bname, buf, False


def _tensor_bytes(tensor: torch.Tensor, full: bool) -> bytes:
    flat = tensor.detach().reshape(-1)
    if not full and flat.numel() > _SAMPLE:
        flat = flat[:: flat.numel() // _SAMPLE][:_SAMPLE]
    flat = flat.to("cpu")
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        flat = flat.to(torch.float64)
    else:
        flat = flat.to(torch.int64)
    return flat.numpy().tobytes()


@torch.no_grad()
def weights_hash(model: nn.Module, full: bool = False) -> str:
    """Hash of the model's digital weights: names, shapes, dtypes and a strided sample of each tensor.

    Router weights are hashed in full (they are small and ROMER calibrates them). Shared tensors
    (tied embeddings) count once. The sample takes every ``n // 4096``-th element, so the cost is
    O(number of tensors), not O(parameters).

    Args:
        model: A digital or converted model.
        full: Hash every element of every tensor (one tensor at a time), e.g. to key a cache whose
            entries cost far more than reading the weights once.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    seen: set[tuple] = set()
    alive: list[torch.Tensor] = []  # keeps hashed tensors alive so their storage is not reused
    for name, tensor, whole in _reference_tensors(model):
        if tensor.device.type == "meta":
            raise ArtifactError(name, "weights are on the meta device; load the model fully first")
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if key in seen:
            continue
        seen.add(key)
        alive.append(tensor)
        digest.update(_tensor_bytes(tensor, full or whole))
    return digest.hexdigest()[:16]


def _architecture(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    parts = [getattr(type(model), "original_class", type(model)).__name__]  # a converted model: its HF class
    if config is not None:
        parts += [type(config).__name__, str(getattr(config, "model_type", ""))]
    return "/".join(parts)


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a saved artifact of ``model`` belongs to: model, device content, chip instance, roles.

    Args:
        model: A model converted with :func:`~romer_aihwkit.convert_to_analog_moe`.

    Returns:
        A JSON-ready dict with the keys of :data:`FINGERPRINT_FIELDS` plus ``device_name``
        (informational, not compared).

    Raises:
        ValueError: The model is not converted.
    """
    from .analog.state import analog_state
    from .analog.summary import analog_summary

    state = analog_state(model)
    placement = getattr(state, "placement", None)  # several devices or a mixed placement: compared by its digest
    out = {
        "architecture": _architecture(model),
        "weights": weights_hash(model),
        "device": device_fingerprint(state.device_config) if placement is None else f"placement:{placement['digest']}",
        "device_name": state.device_config.name,
        "seed": state.seed,
        "t_inference": state.t_inference,
        "analog": {k: int(v) for k, v in analog_summary(model).items()},
        "engine": str(getattr(state, "engine", "aihwkit")),
    }
    if placement is not None:
        out["placement"] = placement["roles"]
    return out


def check_fingerprint(saved: Mapping[str, Any] | None, current: Mapping[str, Any], path: str | os.PathLike,
                      fields: tuple[str, ...] = FINGERPRINT_FIELDS) -> None:
    """Raise unless ``saved`` and ``current`` agree on every field in ``fields``.

    Args:
        saved: The fingerprint stored with the artifact (``None``: the artifact has none).
        current: :func:`fingerprint` of the model it is being loaded onto.
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


def text_digest(source: str) -> str:
    """Content hash of a text source: ``"bundled"`` (the bundled corpus), a file or a folder (``"missing"``)."""
    from .data.corpus import CORPUS_DIR

    if str(source).lower() in ("bundled", "shakespeare"):
        return content_digest(CORPUS_DIR)
    path = Path(source).expanduser()
    if not path.exists():
        return "missing"
    return content_digest(path)


def model_digest(name: str) -> str:
    """Content hash of a model's files: a bundled model, a local folder, or a hub id's cached snapshot."""
    from .models import MODELS_DIR, list_bundled_models

    path = MODELS_DIR / name if name in list_bundled_models() else Path(name).expanduser()
    if path.is_dir():
        return content_digest(path)
    try:
        from huggingface_hub import snapshot_download

        return content_digest(snapshot_download(name, local_files_only=True))
    except Exception:  # not a valid id, or not in the local cache
        return f"hub id {name} (contents not checked)"


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
    import ast
    from importlib.metadata import PackageNotFoundError, version

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
