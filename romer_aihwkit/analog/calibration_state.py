"""The calibration installed in a converted model (router corrections + expert replicas): reset, save, load.

A calibration lives in the analog modules themselves (the routers' ``logit_scale`` /
``logit_bias`` / ``expert_mask`` buffers and the experts' ``replica_of``), so this is part of the
analog layer; :mod:`romer_aihwkit.calibration` computes calibrations and re-exports these functions.

Loading is all-or-nothing: the files, every tensor (keys, shapes, dtypes, values, replica indices)
and the fingerprint of the model and chip instance (:mod:`romer_aihwkit.analog.fingerprint`) are checked
before anything is written, so a bad calibration leaves the installed one untouched. The JSON
records the SHA-256 of the tensor file, so a JSON and tensors of different calibrations never mix;
a calibration that could not be loaded back (a never-programmed model, masks that leave fewer
than top-k experts) is not saved.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write, atomic_write_text
from ..checked_files import check_fingerprint, read_json, read_safetensors
from ..errors import ArtifactError, InputError
from .experts import REPLICA_MODES, AnalogExperts
from .fingerprint import fingerprint
from .state import analog_state
from .trace import experts_of, find_routers

__all__ = ["save_calibration", "load_calibration", "reset_replacements"]

FORMAT = "romer-aihwkit-calibration/2"
_SUFFIXES = ("logit_scale", "logit_bias", "expert_mask", "replica_of")
_DTYPES = {"logit_scale": torch.float32, "logit_bias": torch.float32, "expert_mask": torch.uint8,
           "replica_of": torch.int64}


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


@torch.no_grad()
def reset_replacements(model: nn.Module, routers: list | None = None) -> None:
    """Undo expert replacement: masked experts route again and get their own weights re-programmed.

    Args:
        model: The converted model.
        routers: Only the MoE layers of these routers (``None``: every layer).
    """
    state = analog_state(model)
    for router in find_routers(model) if routers is None else routers:
        router.expert_mask.zero_()
        experts = experts_of(model, router)
        for cold in experts.clear_replicas():
            experts.reprogram(cold, state.programmed_seed(), state.t_inference)


def _experts_by_block(model: nn.Module) -> dict[str, AnalogExperts]:
    return {router.name: experts_of(model, router) for router in find_routers(model)}


def save_calibration(model: nn.Module, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the model's calibration to ``PATH.safetensors`` (tensors) and ``PATH.json`` (metadata).

    The metadata holds the fingerprint of the model and chip instance
    (:func:`romer_aihwkit.analog.fingerprint.fingerprint`), which :func:`load_calibration` checks.

    Args:
        model: A converted, programmed model.
        path: Where to write; a ``.safetensors`` or ``.json`` suffix is replaced.

    Returns:
        The two paths written (atomically).

    Raises:
        InputError: The model was never programmed, or its calibration could not be loaded back
            (masks leaving fewer than top-k experts, non-finite corrections, invalid replicas).
    """
    from safetensors.torch import save

    state = analog_state(model)
    if not state.programmed:
        raise InputError("nothing to save: the model was never programmed, so a calibration of it belongs to no chip "
                         "instance; call program_analog_weights(seed=...) first")
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    experts = _experts_by_block(model)
    for router in find_routers(model):
        i = router.layer_index
        tensors[f"{i}.logit_scale"] = router.logit_scale.detach().cpu().float().clone()
        tensors[f"{i}.logit_bias"] = router.logit_bias.detach().cpu().float().clone()
        tensors[f"{i}.expert_mask"] = router.expert_mask.detach().cpu().to(torch.uint8).clone()
        ex = experts[router.name]
        tensors[f"{i}.replica_of"] = ex.replica_of.detach().cpu().long().clone()
        layers.append({"layer": i, "name": router.name, "num_experts": router.num_experts, "replica_mode": ex.replica_mode})
    tensor_path, json_path = _paths(path)
    try:
        _check_tensors(tensors, find_routers(model), experts, tensor_path)
    except ArtifactError as exc:
        raise InputError(f"refusing to save a calibration that could not be loaded back: {exc.message}") from None
    data = save(tensors, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
        "model_class": getattr(model, "original_class", type(model)).__name__,
        "device": state.device_config.name,
        "seed": state.seed,
        "t_inference": state.t_inference,
        "fingerprint": fingerprint(model),
        "layers": layers,
    }
    atomic_write(tensor_path, lambda tmp: Path(tmp).write_bytes(data))
    atomic_write_text(json_path, json.dumps(meta, indent=2))
    return tensor_path, json_path


def _check_layers(meta: dict[str, Any], routers: list, json_path: Path) -> list[dict[str, Any]]:
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise ArtifactError(json_path, "has no list of 'layers'; not a calibration written by save_calibration")
    try:
        saved = [(layer["name"], int(layer["num_experts"])) for layer in layers]
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(json_path, "a 'layers' entry lacks 'name' or 'num_experts'") from None
    layout = [(r.name, r.num_experts) for r in routers]
    if layout != saved:
        raise ArtifactError(json_path, f"was computed for MoE layers {saved}, but this model has {layout}")
    for layer in layers:
        if layer.get("replica_mode") not in REPLICA_MODES:
            raise ArtifactError(json_path, f"layer {layer['name']!r}: replica_mode must be one of "
                                           f"{list(REPLICA_MODES)}, got {layer.get('replica_mode')!r}")
    return layers


def _check_tensors(tensors: dict[str, torch.Tensor], routers: list, experts: dict[str, AnalogExperts],
                   tensor_path: Path) -> None:
    expected = {f"{r.layer_index}.{s}" for r in routers for s in _SUFFIXES}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        what = (f"missing tensor(s) {missing[:4]}" if missing else "") + (
            ("; " if missing and extra else "") + f"unexpected tensor(s) {extra[:4]}" if extra else "")
        raise ArtifactError(tensor_path, f"{what}: not a complete calibration of this model")
    for router in routers:
        i, e = router.layer_index, router.num_experts
        for suffix in _SUFFIXES:
            t = tensors[f"{i}.{suffix}"]
            if tuple(t.shape) != (e,) or t.dtype != _DTYPES[suffix]:
                raise ArtifactError(tensor_path, f"tensor '{i}.{suffix}' must be {_DTYPES[suffix]} of shape ({e},), "
                                                 f"got {t.dtype} of shape {tuple(t.shape)}")
        for suffix in ("logit_scale", "logit_bias"):
            if not torch.isfinite(tensors[f"{i}.{suffix}"]).all():
                raise ArtifactError(tensor_path, f"tensor '{i}.{suffix}' holds NaN or inf")
        mask = tensors[f"{i}.expert_mask"]
        if not ((mask == 0) | (mask == 1)).all():
            raise ArtifactError(tensor_path, f"tensor '{i}.expert_mask' must hold 0/1 values")
        replica = tensors[f"{i}.replica_of"].tolist()
        analog = experts[router.name].analog_mask()
        colds = [c for c in replica if c >= 0]
        for hot, cold in enumerate(replica):
            if cold < -1 or cold >= e or cold == hot:
                raise ArtifactError(tensor_path, f"tensor '{i}.replica_of': expert {hot} has replica {cold}, "
                                                 f"outside -1 (none) or 0..{e - 1} other than {hot}")
            if cold >= 0 and (not analog[cold] or not analog[hot]):
                raise ArtifactError(tensor_path, f"tensor '{i}.replica_of': expert {hot} -> {cold} involves a "
                                                 "digital expert, which cannot hold or get a replica")
            if cold >= 0 and (replica[cold] >= 0 or not mask[cold] or mask[hot]):
                raise ArtifactError(tensor_path, f"tensor '{i}.replica_of': replica {cold} of expert {hot} must "
                                                 "be masked and hold no replica itself, and the hot expert unmasked")
        if len(set(colds)) != len(colds):
            raise ArtifactError(tensor_path, f"tensor '{i}.replica_of' uses one tile for two replicas: {replica}")
        if int((mask == 0).sum()) < router.top_k:
            raise ArtifactError(tensor_path, f"tensor '{i}.expert_mask' leaves fewer than top_k={router.top_k} "
                                             "experts to route to")


def _check_pair(meta: dict[str, Any], tensor_path: Path, json_path: Path) -> None:
    """The tensor file must be the one the JSON was written with (its SHA-256 is in the JSON)."""
    recorded = meta.get("tensors_sha256")
    if not isinstance(recorded, str):
        raise ArtifactError(json_path, "records no hash of its tensor file (written by an older version, or edited), "
                                       "so it cannot be tied to its tensors; recompute the calibration")
    actual = hashlib.sha256(tensor_path.read_bytes()).hexdigest()
    if actual != recorded:
        raise ArtifactError(tensor_path, f"is not the tensor file {json_path.name} was saved with (SHA-256 "
                                         f"{actual[:12]}..., recorded {recorded[:12]}...): the two files belong to "
                                         "different calibrations or one was edited; nothing was loaded")


def _snapshot(model: nn.Module) -> list[tuple[Any, dict[str, torch.Tensor], dict[int, int], str]]:
    experts = _experts_by_block(model)
    out = []
    for router in find_routers(model):
        ex = experts[router.name]
        buffers = {name: getattr(router, name).detach().clone() for name in ("logit_scale", "logit_bias", "expert_mask")}
        pairs = {hot: cold for hot, cold in enumerate(ex.replica_of.tolist()) if cold >= 0}
        out.append((router, buffers, pairs, ex.replica_mode))
    return out


def _install(model: nn.Module, layers: list[tuple[Any, dict[str, torch.Tensor], dict[int, int], str]]) -> None:
    state = analog_state(model)
    reset_replacements(model)
    experts = _experts_by_block(model)
    for router, buffers, pairs, mode in layers:
        for name, value in buffers.items():
            getattr(router, name).copy_(value.to(getattr(router, name)))
        ex = experts[router.name]
        ex.replica_mode = mode
        for hot, cold in pairs.items():
            ex.set_replica(hot, cold)
            ex.reprogram(cold, state.programmed_seed(), state.t_inference)


@torch.no_grad()
def load_calibration(model: nn.Module, path: str | os.PathLike) -> dict:
    """Install a calibration saved by :func:`save_calibration` onto the same chip instance.

    Replicated experts are re-programmed from the model's seed, so the chip instance (model
    weights, device config content, seed, drift time, analog roles) must match the one the
    calibration was computed on; the saved fingerprint is checked first. All-or-nothing: every
    check runs before the first write, and should installing fail midway the previous calibration
    is put back.

    Args:
        model: A converted, programmed model.
        path: ``PATH`` given to :func:`save_calibration` (either file's path works too).

    Returns:
        The calibration's metadata.

    Raises:
        FileNotFoundError: a file is missing.
        ArtifactError: a file is truncated, corrupted, incomplete or inconsistent (names the file).
        FingerprintMismatchError: the calibration belongs to a different model or chip instance.
    """
    tensor_path, json_path = _paths(path)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"calibration file not found: {p}")
    meta = read_json(json_path, "calibration metadata")
    if meta.get("format") != FORMAT:
        raise ArtifactError(json_path, f"is not a romer-aihwkit calibration of format {FORMAT!r} "
                                       f"(format {meta.get('format')!r})")
    routers = find_routers(model)
    layers = _check_layers(meta, routers, json_path)
    check_fingerprint(meta.get("fingerprint"), fingerprint(model), json_path)
    _check_pair(meta, tensor_path, json_path)
    tensors, tensor_meta = read_safetensors(tensor_path, "calibration tensors")
    if tensor_meta.get("format") != FORMAT:
        raise ArtifactError(tensor_path, f"is not a romer-aihwkit calibration of format {FORMAT!r}")
    experts = _experts_by_block(model)
    _check_tensors(tensors, routers, experts, tensor_path)

    new = []
    for router, layer in zip(routers, layers):
        i = router.layer_index
        buffers = {"logit_scale": tensors[f"{i}.logit_scale"], "logit_bias": tensors[f"{i}.logit_bias"],
                   "expert_mask": tensors[f"{i}.expert_mask"].bool()}
        pairs = {hot: cold for hot, cold in enumerate(tensors[f"{i}.replica_of"].tolist()) if cold >= 0}
        new.append((router, buffers, pairs, layer["replica_mode"]))
    previous = _snapshot(model)
    try:
        _install(model, new)
    except BaseException:
        _install(model, previous)
        raise
    return meta
