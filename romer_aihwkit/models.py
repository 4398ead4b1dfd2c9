"""Loading models: the small MoE LMs bundled with the package, local folders and hub ids.

Bundled models live in ``romer_aihwkit/bundled/models/<name>/`` (``save_pretrained`` output in
fp16/bf16 safetensors + tokenizer files + ``training.json``); they are trained by
``scripts/train_tiny_moe.py`` on the bundled Shakespeare corpus. Weights are loaded as float32
by default, which is what the analog simulation expects.

Only safetensors weights are loaded unless the caller passes ``allow_pickle=True``: a folder whose
weights are pickles (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ...) is refused with
:class:`~romer_aihwkit.errors.UnsafeFileError`, since unpickling can run code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, UnsafeFileError

__all__ = ["bundled_model_path", "bundled_tokenizer", "list_bundled_models", "load_bundled_model", "load_model"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")
"""Weight-file suffixes that are (or may be) pickles or other formats this package does not load by default."""

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
MODELS_DIR = BUNDLED_DIR / "models"
TOKENIZER_DIR = BUNDLED_DIR / "tokenizer"


def list_bundled_models() -> list[str]:
    """Names of the bundled models (folders with a config.json under bundled/models)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def bundled_model_path(name: str) -> Path:
    """Folder of bundled model ``name``; ``ValueError`` listing the names if unknown."""
    names = list_bundled_models()
    if name not in names:
        raise InputError(f"unknown bundled model {name!r}; bundled models: {', '.join(names) or '(none)'}")
    return MODELS_DIR / name


def bundled_tokenizer():
    """The bundled byte-level BPE tokenizer (vocab 4096, ``<|endoftext|>`` as bos/eos/pad)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def _check_weight_files(path: Path, allow_pickle: bool) -> None:
    """Refuse a folder without safetensors weights unless pickled weights are explicitly allowed."""
    if allow_pickle or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeFileError(
            f"model folder {path} has no .safetensors weights, only {', '.join(pickles[:3])}: these are pickles, "
            "and loading a pickle can run code, so it is refused. Convert the checkpoint to safetensors "
            "(save_pretrained(..., safe_serialization=True) where you trust it) or, from Python, call "
            "romer_aihwkit.load_model(path, allow_pickle=True) if you trust the file")
    raise InputError(f"model folder {path} has no weight files (*.safetensors)")


def _load_from_folder(path: Path, dtype, device_map, trust_remote_code, device=None, allow_pickle: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_weight_files(path, allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
            local_files_only=True, use_safetensors=None if allow_pickle else True,
        )
    except Exception as exc:
        if isinstance(exc, (OSError, ValueError, KeyError)) or type(exc).__name__ == "SafetensorError":
            detail = " ".join(str(exc).split())[:300]
            raise InputError(f"cannot load the model in {path}: {type(exc).__name__}: {detail}") from exc
        raise
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        tok = None
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    return model, tok


def load_bundled_model(name: str, dtype: torch.dtype = torch.float32, device: Any = None):
    """Load bundled model ``name`` -> ``(model, tokenizer)``, weights in ``dtype`` (float32 default)."""
    return _load_from_folder(bundled_model_path(name), dtype, None, False, device=device)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device_map: Any = None,
               trust_remote_code: bool = False, allow_pickle: bool = False):
    """Load a causal LM and its tokenizer -> ``(model, tokenizer)``.

    Args:
        name_or_path: A bundled model name (see :func:`list_bundled_models`), a local folder
            (loaded offline) or a Hugging Face hub id (``from_pretrained``; needs the hub or its cache).
        dtype: Weight dtype (float32 by default, what the simulation expects).
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"``).
        trust_remote_code: Run the checkpoint's own modelling code (off by default).
        allow_pickle: Also load pickled weights (``pytorch_model.bin``; transformers unpickles them
            with ``weights_only=True``). Off by default: only safetensors are loaded.

    Returns:
        ``(model, tokenizer)``; the tokenizer is ``None`` when the folder has none.

    Raises:
        InputError: Unknown bundled name, a folder without weights, or weights that fail to load.
        UnsafeFileError: The folder's weights are pickles and ``allow_pickle`` is off.
        FileNotFoundError: No such folder, or a folder without ``config.json``.
        OSError: A hub id that cannot be loaded (offline, no cached copy).
    """
    s = str(name_or_path)
    if s in list_bundled_models():
        return _load_from_folder(MODELS_DIR / s, dtype, device_map, trust_remote_code)
    path = Path(s).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{str(path)!r} exists but has no config.json: not a model folder")
        return _load_from_folder(path, dtype, device_map, trust_remote_code, allow_pickle=allow_pickle)
    if s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"model folder not found: {s!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(s, dtype=dtype, device_map=device_map,
                                                     trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle else True)
        tok = AutoTokenizer.from_pretrained(s, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not load {s!r}: it is not a bundled model ({', '.join(list_bundled_models())}) nor a "
            "local folder, and loading it from the Hugging Face hub failed (offline, or no cached copy). "
            "Download the checkpoint elsewhere and pass its local folder instead."
        ) from e
    model.eval()
    return model, tok
