"""Saving a converted model: its digital weights (HF layout) and its analog state (one chip instance)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..checked_files import check_fingerprint, read_safetensors
from ..errors import ArtifactError, InputError
from .bank import TileHolder
from .experts import AnalogExperts
from .fingerprint import fingerprint
from .matrix import WeightMatrix
from .router import AnalogRouter
from .state import analog_state
from .trace import experts_of, find_routers

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


def save_pretrained_digital(model: nn.Module, save_directory: str | os.PathLike, **kwargs: Any) -> None:
    """``save_pretrained`` of the digital weights: the folder loads back as the original model class.

    The original class's ``save_pretrained`` runs with the instance's class set back to it for the
    call, so ``config.json`` names the original architecture, not the converted subclass.

    Args:
        model: A converted Hugging Face model.
        save_directory: The folder.
        **kwargs: Passed on to ``save_pretrained``.
    """
    weights = digital_state_dict(model)
    converted = type(model)
    original: Any = getattr(converted, "original_class", converted)  # a PreTrainedModel subclass
    model.__class__ = original
    try:
        original.save_pretrained(model, save_directory, state_dict=weights, **kwargs)
    finally:
        model.__class__ = converted


_ROUTER_BUFFERS = ("logit_scale", "logit_bias", "expert_mask")
FORMAT = "romer-aihwkit-analog-state/2"


def _chip_tensors(model: nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    """Everything that makes ``model`` one calibrated chip instance, by ``module/part`` key
    (CPU copies for saving; with ``copy=False`` the live tensors, e.g. to check a file's shapes)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, TileHolder):
            parts = module.chip_state()
        elif isinstance(module, AnalogExperts):
            parts = {"replica_of": module.replica_of,
                     "replica_split": torch.tensor(module.replica_mode == "split")}
        elif isinstance(module, AnalogRouter):
            parts = {b: getattr(module, b) for b in _ROUTER_BUFFERS}
        else:
            continue
        for key, value in parts.items():
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous().clone() if copy else value
    return tensors


def save_analog_state(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save one chip instance: every programmed tile, expert replicas and the routers' installed calibration.

    The file is a safetensors file with the model's fingerprint (architecture, weights, device
    content, seed, t_inference, analog roles, engine) in its metadata; :func:`load_analog_state`
    refuses it for any other model, device or engine.
    """
    from safetensors.torch import save_file


    state = analog_state(model)
    if not state.programmed:
        raise InputError("nothing to save: the model was never programmed, so it is no chip instance; call "
                         "program_analog_weights(seed=...) first")
    tensors = _chip_tensors(model)
    problem = _value_problem(model, tensors) or _metadata_problem(state.seed, state.t_inference, None, state)
    if problem:
        raise InputError(f"refusing to save a chip state that could not be loaded back: {problem}")
    meta = {
        "format": FORMAT,
        "fingerprint": json.dumps(fingerprint(model)),
        "seed": json.dumps(state.seed),
        "t_inference": json.dumps(state.t_inference),
    }
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


@torch.no_grad()
def load_analog_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Restore a chip instance saved by :func:`save_analog_state` onto a model converted the same way.

    All or nothing: the file's format, fingerprint (architecture, weights, device content, analog
    roles, engine) and every tensor's presence and shape are checked before the model is touched.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: not a chip-state file, truncated or corrupted, or not matching this model
            (:class:`~romer_aihwkit.errors.FingerprintMismatchError` lists what differs).
    """

    path = Path(path)
    state = analog_state(model)
    tensors, meta = read_safetensors(path, "analog chip state")
    if meta.get("format") != FORMAT:
        raise ArtifactError(path, f"is not a romer-aihwkit analog chip state ({FORMAT}); got format {meta.get('format')!r}")
    try:
        saved_fp = json.loads(meta.get("fingerprint", "null"))
        seed = json.loads(meta["seed"])
        t_inference = json.loads(meta["t_inference"])
    except (KeyError, json.JSONDecodeError):
        raise ArtifactError(path, "metadata is incomplete or corrupted (fingerprint, seed, t_inference)") from None
    check_fingerprint(saved_fp, fingerprint(model), path,
                      fields=("architecture", "weights", "device", "analog", "engine"))
    problem = _metadata_problem(seed, t_inference, saved_fp, state)
    if problem:
        raise ArtifactError(path, f"{problem}; it was not loaded")
    expected = _chip_tensors(model, copy=False)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(k for k in set(tensors) - set(expected) if not _skippable(model, k))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which this model does not have"
        raise ArtifactError(path, f"does not fit this model: it {what} ({len(missing)} missing, {len(extra)} unexpected)")
    for key, mine in expected.items():
        if tuple(tensors[key].shape) != tuple(mine.shape):
            raise ArtifactError(path, f"{key!r} has shape {tuple(tensors[key].shape)}, this model expects {tuple(mine.shape)}")
        if tensors[key].dtype != mine.dtype:
            raise ArtifactError(path, f"{key!r} is {tensors[key].dtype}, this model holds {mine.dtype} there (the file "
                                      "was converted or edited); it was not loaded")
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise ArtifactError(path, f"{key!r} holds non-finite values")
    problem = _value_problem(model, tensors)
    if problem:
        raise ArtifactError(path, f"{problem}; it was not loaded")
    for name, module in model.named_modules():
        if isinstance(module, TileHolder):
            problem = module.check_chip_state({k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name})
            if problem:
                raise ArtifactError(path, f"{name}: {problem}")
        elif isinstance(module, AnalogExperts):
            replica = tensors[f"{name}/replica_of"]
            if replica.numel() and int(replica.max()) >= module.num_experts:
                raise ArtifactError(path, f"{name}/replica_of names an expert out of range")

    # every check passed: write
    for name, module in model.named_modules():
        part = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        if isinstance(module, TileHolder):
            module.load_chip_state(part)
        elif isinstance(module, AnalogExperts):
            # before its banks' tiles (named_modules lists parents first): a bank that keeps the replica
            # source in its own chip state has it overwritten by that, the others keep it from here
            module.clear_replicas()
            for hot, cold in enumerate(part["replica_of"].tolist()):
                if cold >= 0:
                    for bank in module.banks():
                        bank.set_source(cold, hot)
            module.replica_of.copy_(part["replica_of"])
            module.replica_mode = "split" if bool(part["replica_split"]) else "average"
        elif isinstance(module, AnalogRouter):
            for b in _ROUTER_BUFFERS:
                getattr(module, b).copy_(part[b])
    state.seed = seed
    state.t_inference = t_inference


def _metadata_problem(seed: Any, t_inference: Any, saved_fp: Any, state: Any) -> str | None:
    """What is wrong with a chip state's ``seed`` / ``t_inference`` (``None``: valid and, when
    ``saved_fp`` is given, equal to the fingerprint's)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        return f"metadata seed must be a non-negative integer, got {seed!r}"
    if t_inference is not None:
        if isinstance(t_inference, bool) or not isinstance(t_inference, (int, float)):
            return f"metadata t_inference must be a number of seconds or null, got {t_inference!r}"
        try:
            state.check_t_inference(t_inference)
        except ValueError as exc:
            return f"metadata t_inference: {exc}"
    if saved_fp is not None:
        for name, value in (("seed", seed), ("t_inference", t_inference)):
            other = saved_fp.get(name)
            same = other == value if other is None or value is None else float(other) == float(value)
            if not same:
                return (f"metadata {name}={value!r} disagrees with the fingerprint's {name}={other!r} (the file was "
                        "edited)")
    return None


def _value_problem(model: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """What makes the mask and replica tensors of a chip state unusable (``None``: every layer can
    still route its top-k experts, and every replica index names another expert)."""

    names = {m: n for n, m in model.named_modules()}
    for router in find_routers(model):
        key, e = names[router], router.num_experts
        mask = tensors.get(f"{key}/expert_mask")
        if mask is not None:
            if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
                return f"{key}/expert_mask must hold 0/1 values"
            masked = int(mask.bool().sum())
            if masked >= e:
                return f"{key}/expert_mask masks every expert: no token could be routed"
            if e - masked < router.top_k:
                return (f"{key}/expert_mask masks {masked} of {e} experts, which leaves fewer than "
                        f"top_k={router.top_k} experts to route to")
        replica_key = f"{names[experts_of(model, router)]}/replica_of"
        replica = tensors.get(replica_key)
        if replica is None:
            continue
        values = replica.tolist()
        for hot, cold in enumerate(values):
            if cold < -1 or cold >= e or cold == hot:
                return (f"{replica_key}: expert {hot} has replica {cold}, outside -1 (none) or 0..{e - 1} "
                        f"other than {hot}")
        colds = [c for c in values if c >= 0]
        if len(set(colds)) != len(colds):
            return f"{replica_key} uses one expert's tiles for two replicas: {values}"
    return None


def _skippable(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is state its tile holder skips (e.g. AIHWKit programming state of a matrix
    programmed by the shared physics), not a part this model lacks."""
    name, _, part = key.partition("/")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return isinstance(module, TileHolder) and module.ignores_chip_part(part)
