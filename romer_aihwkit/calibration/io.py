"""Saving and loading a calibration (router corrections + expert replicas) as safetensors + JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..analog.convert import analog_state
from ..analog.experts import AnalogExperts
from ..analog.trace import experts_of, find_routers
from ..atomic import atomic_write, atomic_write_text

__all__ = ["save_calibration", "load_calibration"]

FORMAT = "romer-aihwkit-calibration/1"


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def _experts_by_block(model: nn.Module) -> dict[str, AnalogExperts]:
    return {router.name: experts_of(model, router) for router in find_routers(model)}


def save_calibration(model: nn.Module, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the model's calibration to ``PATH.safetensors`` (tensors) and ``PATH.json`` (metadata).

    Returns:
        The two paths written (atomically).
    """
    from safetensors.torch import save_file

    state = analog_state(model)
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    experts = _experts_by_block(model)
    for router in find_routers(model):
        i = router.layer_index
        tensors[f"{i}.logit_scale"] = router.logit_scale.detach().cpu().clone()
        tensors[f"{i}.logit_bias"] = router.logit_bias.detach().cpu().clone()
        tensors[f"{i}.expert_mask"] = router.expert_mask.detach().cpu().to(torch.uint8).clone()
        ex = experts[router.name]
        tensors[f"{i}.replica_of"] = ex.replica_of.detach().cpu().clone()
        layers.append({"layer": i, "name": router.name, "num_experts": router.num_experts, "replica_mode": ex.replica_mode})
    meta = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "device": state.device_config.name,
        "seed": state.seed,
        "t_inference": state.t_inference,
        "layers": layers,
    }
    tensor_path, json_path = _paths(path)
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write_text(json_path, json.dumps(meta, indent=2))
    return tensor_path, json_path


@torch.no_grad()
def load_calibration(model: nn.Module, path: str | os.PathLike) -> dict:
    """Install a calibration saved by :func:`save_calibration` onto the same chip instance.

    Replicated experts are re-programmed from the model's seed, so the chip instance (device,
    seed, drift time) must match the one the calibration was computed on.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the calibration belongs to a different model layout or chip instance.
    """
    from safetensors.torch import load_file

    from .romer import reset_replacements

    tensor_path, json_path = _paths(path)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"calibration file not found: {p}")
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a romer-aihwkit calibration (format {meta.get('format')!r})")
    state = analog_state(model)
    routers = find_routers(model)
    layout = [(r.name, r.num_experts) for r in routers]
    saved = [(layer["name"], layer["num_experts"]) for layer in meta["layers"]]
    if layout != saved:
        raise ValueError(
            f"calibration {json_path} was computed for MoE layers {saved}, but this model has {layout}"
        )
    if (meta["device"], meta["seed"], meta["t_inference"]) != (state.device_config.name, state.seed, state.t_inference):
        raise ValueError(
            f"calibration {json_path} belongs to chip instance (device={meta['device']}, seed={meta['seed']}, "
            f"t={meta['t_inference']}); this model is (device={state.device_config.name}, seed={state.seed}, "
            f"t={state.t_inference}). Program and drift the same instance first."
        )
    tensors = load_file(str(tensor_path))
    reset_replacements(model)
    experts = _experts_by_block(model)
    for router, layer in zip(routers, meta["layers"]):
        i = router.layer_index
        router.logit_scale.copy_(tensors[f"{i}.logit_scale"])
        router.logit_bias.copy_(tensors[f"{i}.logit_bias"])
        router.expert_mask.copy_(tensors[f"{i}.expert_mask"].bool())
        ex = experts[router.name]
        ex.replica_mode = layer["replica_mode"]
        for hot, cold in enumerate(tensors[f"{i}.replica_of"].tolist()):
            if cold >= 0:
                ex.set_replica(hot, cold)
                ex.reprogram(cold, state.seed, state.t_inference)
    return meta
