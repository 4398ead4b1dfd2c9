"""Loading models: the small MoE LMs bundled with the package, local folders and hub ids.

Bundled models live in ``romer_aihwkit/bundled/models/<name>/`` (``save_pretrained`` output in
fp16/bf16 safetensors + tokenizer files + ``training.json``); they are trained by
``scripts/train_tiny_moe.py`` on the bundled Shakespeare corpus. Weights are loaded as float32
by default, which is what the analog simulation expects.

Only safetensors weights are loaded unless the caller passes ``allow_pickle=True``: a folder whose
weights are pickles (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ...) is refused with
:class:`~romer_aihwkit.errors.UnsafeFileError`, since unpickling can run code.

A local folder is checked before anything is allocated (:func:`check_model_folder`): the config is
self-consistent, the declared size fits in memory, every weight the architecture needs is in the
safetensors files with the right shape and dtype, and every weight is finite. After loading, any key
transformers reports missing, unexpected or mismatched (it would initialise a missing one at random)
refuses the model.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .checked_files import content_digest
from .compat import transformers as transformers_compat
from .errors import InputError, UnsafeFileError

__all__ = ["bundled_model_path", "bundled_tokenizer", "check_model_folder", "list_bundled_models",
           "load_bundled_model", "load_model", "model_digest"]

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


# ------------------------------------------------------------------ checking a model folder before loading it
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")
"""Files of which at least one makes a folder hold a tokenizer."""
_INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit on a header
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
_OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_POSITIVE_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim",
                   "num_experts_per_tok", "decoder_sparse_step", "n_group", "topk_group", *_EXPERT_COUNTS)
_NON_NEGATIVE_SIZES = ("shared_expert_intermediate_size", "n_shared_experts", "first_k_dense_replace")


def _config_error(path: Path, message: str) -> InputError:
    return InputError(f"{path / 'config.json'}: {message}; the model was not loaded")


def _check_config(config: Any, path: Path) -> None:
    """Refuse a config whose sizes are not positive integers or whose MoE settings cannot route."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _POSITIVE_SIZES + _NON_NEGATIVE_SIZES:
        value = getattr(text, name, None)
        if value is None:
            continue
        low = 1 if name in _POSITIVE_SIZES else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _config_error(path, f"{name} must be an integer >= {low}, got {value!r}")
    experts = next((getattr(text, n) for n in _EXPERT_COUNTS if getattr(text, n, None) is not None), None)
    top_k = getattr(text, "num_experts_per_tok", None)
    if experts is not None and top_k is not None and top_k > experts:
        raise _config_error(path, f"num_experts_per_tok={top_k} exceeds the number of experts ({experts}): no "
                                  "token could be routed")
    heads, kv = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    if heads is not None and kv is not None and heads % kv:
        raise _config_error(path, f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    hidden = getattr(text, "hidden_size", None)
    if heads and hidden and getattr(text, "head_dim", None) is None and hidden % heads:
        raise _config_error(path, f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    groups, topk_group = getattr(text, "n_group", None), getattr(text, "topk_group", None)
    if experts is not None and groups is not None:
        if experts % groups:
            raise _config_error(path, f"n_group={groups} does not divide the {experts} experts")
        if topk_group is not None and (topk_group > groups or (top_k or 0) > topk_group * (experts // groups)):
            raise _config_error(path, f"topk_group={topk_group} of n_group={groups} groups cannot hold "
                                      f"num_experts_per_tok={top_k} experts")
    layers = getattr(text, "num_hidden_layers", None)
    dense = getattr(text, "first_k_dense_replace", None)
    if layers is not None and dense is not None and dense > layers:
        raise _config_error(path, f"first_k_dense_replace={dense} exceeds num_hidden_layers={layers}")


def _meta_model(config: Any, path: Path, trust_remote_code: bool) -> Any:
    """The architecture ``config`` describes, built on the meta device (no memory for weights)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, ZeroDivisionError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise _config_error(path, f"describes no buildable model ({type(exc).__name__}: {detail})") from None


def _available_memory(device: Any = None) -> int:
    """Bytes free for the weights: the accelerator's free memory for a CUDA device, else available RAM."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return 2**62


def _check_memory(meta: Any, dtype: torch.dtype, path: Path, device: Any) -> int:
    """Refuse with the figure when the declared weights, in ``dtype``, exceed the free memory."""
    size = dtype.itemsize if isinstance(dtype, torch.dtype) else 4
    tensors = [*meta.parameters(), *meta.buffers()]  # tied weights count once
    need = sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)
    free = _available_memory(device)
    if need > free:
        params = sum(t.numel() for t in tensors)
        raise InputError(
            f"{path / 'config.json'} declares {params:,} weights: about {_size(need)} in {dtype}, but only "
            f"{_size(free)} of {'accelerator ' if device is not None and torch.device(device).type == 'cuda' else ''}"
            "memory is available; the model was not loaded (check the config's sizes, or load it on a larger machine "
            "or with device_map)")
    return need


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _safetensors_header(file: Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets), checked against the file size."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, _MAX_HEADER):
            raise InputError(f"{file}: not a readable safetensors file (header length {n}, file size {size} bytes); "
                             "it is truncated or corrupted")
        try:
            table = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{file}: the safetensors header is not valid JSON; the file is corrupted") from None
    if not isinstance(table, dict):
        raise InputError(f"{file}: the safetensors header is not a table of tensors; the file is corrupted")
    table.pop("__metadata__", None)
    data = size - 8 - n
    for key, entry in table.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            itemsize = {**_FLOAT_DTYPES, **_OTHER_DTYPES}[dtype]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{file}: tensor {key!r} has an unreadable entry in the header ({entry!r:.120})") from None
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= start <= end <= data or end - start != numel * itemsize:
            raise InputError(f"{file}: tensor {key!r} ({dtype} {tuple(shape)}) lies outside the file's "
                             f"{data} data bytes; the file is truncated or corrupted")
    return table


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers loads: those of the shard index, else ``model.safetensors``."""
    index = path / _INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise InputError(f"{index}: not a readable shard index (a JSON object with a 'weight_map' of tensor "
                             "-> file)") from None
        for name in files:
            if not isinstance(name, str) or Path(name).name != name or not (path / name).is_file():
                key = next(k for k, v in weight_map.items() if v == name)
                raise InputError(f"{index}: shard {name!r} (holding {key!r}) is not in {path}; the checkpoint is "
                                 "incomplete")
        headers = {name: _safetensors_header(path / name) for name in files}
        for key, name in weight_map.items():
            if key not in headers[name]:
                raise InputError(f"{index}: tensor {key!r} is listed in {name}, which does not hold it; the "
                                 "checkpoint is incomplete")
        return [path / name for name in files]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(p.name for p in path.glob("*.safetensors"))
    raise InputError(f"model folder {path} has no model.safetensors nor {_INDEX}"
                     + (f" (found {', '.join(others[:3])}, which transformers does not load)" if others else ""))


def _model_key(key: str, names: dict[str, Any], prefix: str) -> str | None:
    """The model parameter a checkpoint key loads into without renaming (``None``: it needs a conversion)."""
    if key in names:
        return key
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in names:
        return key[len(prefix) + 1:]
    if prefix and f"{prefix}.{key}" in names:
        return f"{prefix}.{key}"
    return None


def _layouts(meta: Any) -> list[dict[str, torch.Tensor]]:
    """The weight names and shapes ``meta`` loads: its own, and the layout ``save_pretrained`` writes
    (transformers converts some families' experts, e.g. per-expert matrices into fused ones)."""
    native = meta.state_dict()
    saved = transformers_compat.saved_layout(meta, native)
    return [native] if saved.keys() == native.keys() else [native, saved]


def _check_weights(meta: Any, files: list[Path], path: Path) -> None:
    """Every weight ``meta`` needs is in ``files`` with its shape and kind of dtype; every weight finite."""
    from safetensors import safe_open

    prefix = getattr(meta, "base_model_prefix", "") or ""
    tied = transformers_compat.tied_weight_keys(meta)
    ignore = [re.compile(p) for p in transformers_compat.ignored_missing_keys(meta)]
    headers = {file: _safetensors_header(file) for file in files}
    entries = {key: (file, entry) for file, table in headers.items() for key, entry in table.items()}
    layouts = _layouts(meta) if meta is not None else [{}]
    # the layout every checkpoint key belongs to; none: a layout transformers converts otherwise (checked after loading)
    layout = next((lay for lay in layouts if lay and all(_model_key(k, lay, prefix) for k in entries)), None)
    found: set[str] = set()
    for key, (file, entry) in entries.items():
        name = _model_key(key, layout if layout is not None else layouts[0], prefix)
        if name is None:
            continue
        found.add(name)
        want = (layout if layout is not None else layouts[0])[name]
        shape, dtype = tuple(int(d) for d in entry["shape"]), entry["dtype"]
        if shape != tuple(want.shape):
            raise InputError(f"{file}: tensor {key!r} has shape {shape}, but the architecture in config.json "
                             f"needs {tuple(want.shape)}; the model was not loaded")
        if (dtype in _FLOAT_DTYPES) != want.is_floating_point():
            raise InputError(f"{file}: tensor {key!r} is {dtype}, but the architecture needs a "
                             f"{'floating-point' if want.is_floating_point() else str(want.dtype)} tensor; the model "
                             "was not loaded")
    if layout is not None:
        missing = sorted(k for k in layout if k not in found and k not in tied and not any(p.search(k) for p in ignore))
        if missing:
            raise InputError(
                f"model folder {path}: weight {missing[0]!r} is missing from {', '.join(f.name for f in files)} "
                f"({len(missing)} missing); transformers would initialise it at random, so the model was not loaded")
    for file, table in headers.items():
        floats = [k for k, e in table.items() if e["dtype"] in _FLOAT_DTYPES]
        if not floats:
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in floats:
                    tensor = f.get_tensor(key)  # one tensor at a time
                    ok = torch.isfinite(tensor if tensor.dtype.itemsize > 1 else tensor.float())
                    if not bool(ok.all()):
                        raise InputError(f"{file}: tensor {key!r} holds {int((~ok).sum())} NaN or infinite values "
                                         f"(of {tensor.numel()}); the model was not loaded")
                    del tensor, ok
        except InputError:
            raise
        except Exception as exc:  # safetensors' own SafetensorError
            detail = " ".join(str(exc).split())[:200]
            raise InputError(f"{file}: not a readable safetensors file ({detail})") from None


def check_model_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: Any = None,
                       trust_remote_code: bool = False, allow_pickle: bool = False,
                       check_memory: bool = True) -> Any:
    """Check a model folder before any weight is allocated; return its config.

    Checks, in order: ``config.json`` parses and is self-consistent (sizes positive integers,
    ``num_experts_per_tok`` <= experts, heads divisible, expert groups that can hold top-k); the
    architecture builds on the meta device; its weights, in ``dtype``, fit in the free memory
    (RAM, or the CUDA device's free memory); the safetensors headers (and the shard index) are
    intact, every tensor the architecture needs is present with its shape and a dtype of the right
    kind; and every floating-point tensor is finite (read one tensor at a time).

    Args:
        path: The model folder (with ``config.json``).
        dtype: The dtype the weights will be loaded in (for the memory estimate).
        device: Where they will be loaded (``None``: the CPU).
        trust_remote_code: Build the architecture from the folder's own code.
        allow_pickle: The folder may hold pickled weights instead of safetensors (their contents
            are then checked only after loading).
        check_memory: Compare the declared size with the free memory.

    Returns:
        The ``transformers`` config.

    Raises:
        InputError: The first problem found, naming the file and tensor or config field.
    """
    from transformers import AutoConfig

    path = Path(path)
    _check_weight_files(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise _config_error(path, f"is not a readable model config ({type(exc).__name__}: {detail})") from None
    _check_config(config, path)
    try:
        meta = _meta_model(config, path, trust_remote_code)
    except InputError:
        if not trust_remote_code:
            raise
        meta = None  # remote code that cannot be built on the meta device: checked after loading
    if check_memory and meta is not None:
        _check_memory(meta, dtype, path, device)
    if any(path.glob("*.safetensors")):
        _check_weights(meta, _weight_files(path), path)
    return config


def _check_loading_info(info: dict[str, Any], where: Any) -> None:
    """Refuse a model transformers loaded with missing (randomly initialised), unexpected or mis-shaped weights."""
    for field, what in (("missing_keys", "is missing from the checkpoint: transformers initialised it at random"),
                        ("mismatched_keys", "has another shape in the checkpoint than in the architecture"),
                        ("unexpected_keys", "is in the checkpoint but not in the architecture of config.json")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(field) or ())
        if keys:
            raise InputError(f"{where}: weight {keys[0]!r} {what} ({len(keys)} such weights); the model was refused")


def _load_from_folder(path, dtype, device_map, trust_remote_code, device=None, allow_pickle: bool = False,
                      require_tokenizer: bool = False):
    from transformers import AutoModelForCausalLM

    check_model_folder(path, dtype, device, trust_remote_code, allow_pickle, check_memory=device_map is None)
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
            local_files_only=True, use_safetensors=None if allow_pickle else True, output_loading_info=True,
        )
        model, info = loaded
    except Exception as exc:
        if isinstance(exc, (OSError, ValueError, KeyError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
            detail = " ".join(str(exc).split())[:300]
            raise InputError(f"cannot load the model in {path}: {type(exc).__name__}: {detail}") from exc
        raise
    _check_loading_info(info, f"model folder {path}")
    tok = _folder_tokenizer(path, trust_remote_code, require_tokenizer)
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    return model, tok


def _folder_tokenizer(path: Path, trust_remote_code: bool, required: bool) -> Any:
    """The folder's tokenizer; ``None`` when it has no tokenizer files (an error when ``required``)."""
    from transformers import AutoTokenizer

    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        if required:
            raise InputError(f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...): "
                             "texts cannot be tokenized for this model. Save its tokenizer into the folder "
                             "(tokenizer.save_pretrained(folder))")
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"model folder {path}: its tokenizer ({', '.join(present)}) cannot be loaded "
                         f"({type(exc).__name__}: {detail})") from None


def load_bundled_model(name: str, dtype: torch.dtype = torch.float32, device: Any = None):
    """Load bundled model ``name`` -> ``(model, tokenizer)``, weights in ``dtype`` (float32 default)."""
    return _load_from_folder(bundled_model_path(name), dtype, None, False, device=device)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device_map: Any = None,
               trust_remote_code: bool = False, allow_pickle: bool = False, require_tokenizer: bool = False):
    """Load a causal LM and its tokenizer -> ``(model, tokenizer)``.

    Args:
        name_or_path: A bundled model name (see :func:`list_bundled_models`), a local folder
            (loaded offline) or a Hugging Face hub id (``from_pretrained``; needs the hub or its cache).
        dtype: Weight dtype (float32 by default, what the simulation expects).
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"``).
        trust_remote_code: Run the checkpoint's own modelling code (off by default).
        allow_pickle: Also load pickled weights (``pytorch_model.bin``; transformers unpickles them
            with ``weights_only=True``). Off by default: only safetensors are loaded.
        require_tokenizer: Refuse a folder without tokenizer files (instead of returning ``None``).

    A local folder is checked first (:func:`check_model_folder`), and a model transformers loads
    with missing, unexpected or mis-shaped weights is refused.

    Returns:
        ``(model, tokenizer)``; the tokenizer is ``None`` when the folder has none.

    Raises:
        InputError: Unknown bundled name, a folder without weights, a config that is inconsistent
            or too large for the free memory, a weight missing, mis-shaped or not finite (the file
            and tensor are named), tokenizer files that do not load, or no tokenizer although
            ``require_tokenizer``.
        UnsafeFileError: The folder's weights are pickles and ``allow_pickle`` is off.
        FileNotFoundError: No such folder, or a folder without ``config.json``.
        OSError: A hub id that cannot be loaded (offline, no cached copy).
    """
    s = str(name_or_path)
    if s in list_bundled_models():
        return _load_from_folder(MODELS_DIR / s, dtype, device_map, trust_remote_code,
                                 require_tokenizer=require_tokenizer)
    path = Path(s).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{str(path)!r} exists but has no config.json: not a model folder")
        return _load_from_folder(path, dtype, device_map, trust_remote_code, allow_pickle=allow_pickle,
                                 require_tokenizer=require_tokenizer)
    if s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"model folder not found: {s!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(s, dtype=dtype, device_map=device_map,
                                                           trust_remote_code=trust_remote_code,
                                                           use_safetensors=None if allow_pickle else True,
                                                           output_loading_info=True)
        model, info = loaded
        tok = AutoTokenizer.from_pretrained(s, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not load {s!r}: it is not a bundled model ({', '.join(list_bundled_models())}) nor a "
            "local folder, and loading it from the Hugging Face hub failed (offline, or no cached copy). "
            "Download the checkpoint elsewhere and pass its local folder instead."
        ) from e
    _check_loading_info(info, f"hub model {s!r}")
    model.eval()
    return model, tok


def model_digest(name: str) -> str:
    """Content hash of a model's files: a bundled model, a local folder, or a hub id's cached snapshot."""
    path = MODELS_DIR / name if name in list_bundled_models() else Path(name).expanduser()
    if path.is_dir():
        return content_digest(path)
    try:
        from huggingface_hub import snapshot_download

        return content_digest(snapshot_download(name, local_files_only=True))
    except Exception:  # not a valid id, or not in the local cache
        return f"hub id {name} (contents not checked)"
