"""Saving a converted model: its digital weights (HF layout) and its analog state (one chip instance)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write
from .convert import analog_state
from .experts import AnalogExperts
from .matrix import AnalogMatrix, WeightMatrix
from .router import AnalogRouter

__all__ = ["digital_state_dict", "save_pretrained_digital", "save_analog_state", "load_analog_state"]


def digital_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the original Hugging Face parameter names and layouts.

    Routers, experts (including experts whose tiles hold a ROMER replica) and converted linears
    give back the digital weights they were programmed from.
    """
    replaced: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in replaced):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, AnalogRouter):
            state = {f"{prefix}weight": module.weight.detach()}
            if module.e_score_correction_bias is not None:
                state[f"{prefix}e_score_correction_bias"] = module.e_score_correction_bias
            replaced[name] = state
        elif isinstance(module, AnalogExperts):
            replaced[name] = module.digital_state(prefix)
        elif isinstance(module, WeightMatrix):
            state = {f"{prefix}weight": module.weight.detach()}
            if module.bias is not None:
                state[f"{prefix}bias"] = module.bias.detach()
            replaced[name] = state
    out = {
        key: value
        for key, value in model.state_dict().items()
        if not any(key.startswith(p + ".") for p in replaced)
    }
    for state in replaced.values():
        out.update(state)
    return out


def save_pretrained_digital(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> None:
    """``save_pretrained`` of the digital weights: the folder loads back as the original model class."""
    type(model).save_pretrained(model, save_directory, state_dict=digital_state_dict(model), **kwargs)


def _tile_tensors(matrix: AnalogMatrix) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, tile in enumerate(matrix.analog.analog_tiles()):
        out[f"{i}.weight"] = tile.tile.weight.detach()
        for attr in ("programmed_weights", "reference_combined_weights", "drift_baseline", "drift_readout_tensor", "alpha"):
            value = getattr(tile, attr, None)
            if isinstance(value, torch.Tensor):
                out[f"{i}.{attr}"] = value.detach()
        for j, value in enumerate(tile.drift_noise_parameters or []):
            if isinstance(value, torch.Tensor):
                out[f"{i}.drift_noise_parameters.{j}"] = value.detach()
        if getattr(tile.tile, "out_noise_values", None) is not None:
            out[f"{i}.out_noise_values"] = tile.tile.out_noise_values.detach()
    return out


def save_analog_state(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the programmed (and drifted) tiles of every analog matrix to a safetensors file."""
    from safetensors.torch import save_file

    state = analog_state(model)
    if not state.programmed:
        raise RuntimeError("nothing to save: call program_analog_weights(seed=...) first")
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, AnalogMatrix):
            for key, value in _tile_tensors(module).items():
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous().clone()
        elif isinstance(module, AnalogExperts):
            tensors[f"{name}/replica_of"] = module.replica_of.cpu().clone()
    meta = {
        "format": "romer-aihwkit-analog-state/1",
        "device": json.dumps(state.device_config.to_dict()),
        "seed": str(state.seed),
        "t_inference": str(state.t_inference),
    }
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


@torch.no_grad()
def load_analog_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Restore a chip instance saved by :func:`save_analog_state` onto a model converted the same way."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analog state file not found: {path}")
    state = analog_state(model)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "romer-aihwkit-analog-state/1":
            raise ValueError(f"{path} is not a romer-aihwkit analog state file")
        keys = set(f.keys())
        modules = dict(model.named_modules())
        expected = {k for k in keys}
        for name, module in modules.items():
            if isinstance(module, AnalogMatrix):
                for i, tile in enumerate(module.analog.analog_tiles()):
                    key = f"{name}/{i}.weight"
                    if key not in keys:
                        raise ValueError(f"{path} has no state for analog matrix {name!r}: was it saved from this model?")
                    device = tile.tile.weight.device
                    tile.tile.weight.data.copy_(f.get_tensor(key))
                    expected.discard(key)
                    for attr in ("programmed_weights", "reference_combined_weights", "drift_baseline", "drift_readout_tensor", "alpha"):
                        k = f"{name}/{i}.{attr}"
                        if k in keys:
                            value = f.get_tensor(k).to(device)
                            if attr == "alpha":
                                tile.__dict__.pop("alpha", None)
                            setattr(tile, attr, value)
                            expected.discard(k)
                    params = []
                    j = 0
                    while f"{name}/{i}.drift_noise_parameters.{j}" in keys:
                        k = f"{name}/{i}.drift_noise_parameters.{j}"
                        params.append(f.get_tensor(k).to(device))
                        expected.discard(k)
                        j += 1
                    tile.drift_noise_parameters = params or None
                    k = f"{name}/{i}.out_noise_values"
                    if k in keys:
                        tile.tile.out_noise_values.data.copy_(f.get_tensor(k))
                        expected.discard(k)
                module.programmed = True
            elif isinstance(module, AnalogExperts):
                k = f"{name}/replica_of"
                if k in keys:
                    module.replica_of.copy_(f.get_tensor(k))
                    expected.discard(k)
        if expected:
            raise ValueError(f"{path} holds state for modules this model does not have, e.g. {sorted(expected)[0]!r}")
    state.seed = int(meta["seed"]) if meta.get("seed", "None") != "None" else None
    state.t_inference = float(meta["t_inference"]) if meta.get("t_inference", "None") != "None" else None
