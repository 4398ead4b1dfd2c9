"""Fingerprints of converted models: what a saved artifact (calibration, chip state) belongs to.

Every artifact this package writes carries a *fingerprint* of what it belongs to, and every loader
compares it (:func:`romer_aihwkit.checked_files.check_fingerprint`) with the model it is loaded
onto before changing anything:

* ``architecture``: model class, config class and ``model_type``;
* ``weights``: a hash of the model's digital weights (names, shapes, dtypes, a deterministic
  strided sample of every tensor, and the full router weights), cheap enough for a 7B model;
* ``device``: a hash of the resolved device-config *content* (every physical field; the name,
  description and source text do not count);
* ``seed``, ``t_inference``: the chip instance;
* ``analog``: which roles are analog (counts per role, from ``analog_summary``);
* ``engine``: the simulation engine of the conversion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..checked_files import FINGERPRINT_FIELDS
from ..devices import load_device_config
from ..errors import ArtifactError
from .matrix import WeightMatrix
from .router import AnalogRouter
from .state import analog_state
from .summary import analog_summary

__all__ = ["FINGERPRINT_FIELDS", "device_fingerprint", "fingerprint", "weights_hash"]

_SAMPLE = 4096  # elements hashed per tensor (strided over the whole tensor)


def device_fingerprint(device_config: Any) -> str:
    """Hash of a device config's content: every field except its name, description and source.

    Args:
        device_config: A :class:`~romer_aihwkit.devices.DeviceConfig`, preset name or YAML path.

    Returns:
        16 hex digits; equal for two configs that simulate the same device.
    """
    return load_device_config(device_config).content_hash()


def _reference_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """``(name, tensor, hash_fully)`` of the model's digital weights, whatever is on the tiles.

    Experts give their *own* weights even while their tiles hold a ROMER replica; routers give their
    digital weight (hashed fully) and correction bias but not their calibration buffers; tile
    internals (programmed, drifted weights) are skipped.
    """
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
    state = analog_state(model)
    placement = state.placement  # several devices or a mixed placement: compared by its digest
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


