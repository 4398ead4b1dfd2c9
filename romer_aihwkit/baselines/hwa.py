"""Hardware-aware training (HWA): AIHWKit's noise-injection fine-tuning of routers and experts.

AIHWKit's central method (Rasch et al., Nat. Electron. 2023, ``StandardHWATrainingPreset``): train
with the analog forward pass in the loop, so the weights learn to tolerate the hardware's noise.
Each MoE block is converted by its family adapter, like the analog conversion, but with an
:class:`HWAConversionContext`: every router, expert and shared-expert matrix runs on an AIHWKit
``AnalogLinear`` with a torch tile in training mode: the device preset's periphery (DAC/ADC, output
noise, weight remapping, clipping) plus a weight-noise modifier (``WeightModifierType.ADD_NORMAL``),
since the torch tiles reject per-forward read noise (``forward.w_noise``) and the other C++-only
forward non-idealities (trained without them; the evaluation has them all). Attention, embeddings,
norms and the shared-expert gate stay digital and frozen. The trained weights are written back into
the original model's layout (the experts' :class:`~romer_aihwkit.adapters.ExpertLayout`, as
``save_pretrained`` of a converted model does), so the result is a plain digital checkpoint that is
converted and programmed like any model.

:func:`hwa_finetune` trains one model; :func:`hwa_checkpoint` caches the trained checkpoint in a
folder keyed by the content of everything that determines it (:func:`hwa_cache_key`), so every chip
instance and every rerun reuses it, and nothing else does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..adapters import find_moe_blocks
from ..adapters.base import ExpertLayout
from ..adapters.routing import route
from ..analog.block import AnalogMoEBlock
from ..analog.fingerprint import device_fingerprint, weights_hash
from ..checked_files import code_fingerprint, read_json
from ..data import max_positions_of, text_blocks
from ..data.corpus import text_digest
from ..devices import load_device_config
from ..errors import ArtifactError, InputError
from ..models import load_model
from ..stress import stress_label
from ..validate import check_finite_fields, check_seed

__all__ = ["HWAConfig", "HWAConversionContext", "HWA_MARK", "hwa_cache_key", "hwa_checkpoint", "hwa_finetune", "hwa_rpu_config",
           "is_hwa_trained"]

HWA_MARK = "romer_hwa"
"""Key in the model config (``config.json``) recording the HWA training of a checkpoint."""


@dataclass(frozen=True)
class HWAConfig:
    """Settings of hardware-aware fine-tuning (everything that determines the trained weights)."""

    steps: int = 100
    """Optimizer steps (AdamW)."""
    lr: float = 2e-4
    """Learning rate (constant)."""
    batch_size: int = 8
    """Token blocks per step."""
    seq_len: int = 128
    """Tokens per block."""
    weight_noise: float = 0.05
    """``ADD_NORMAL`` weight-noise std, relative to each tile's largest weight, drawn every forward."""
    train_blocks: int | None = 2048
    """Training blocks taken from the start of the training text (``None``: all)."""
    seed: int = 0
    """Seed of the batch order and of the injected noise."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"HWA {name} must be a positive integer, got {value!r}")
        check_finite_fields(self, "HWA")
        if not self.lr > 0:
            raise InputError(f"HWA lr must be positive, got {self.lr!r}")
        if not 0 <= self.weight_noise < 1:
            raise InputError(f"HWA weight_noise must be in [0, 1), got {self.weight_noise!r}")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise InputError(f"HWA train_blocks must be positive or None, got {self.train_blocks!r}")
        check_seed(self.seed, "HWA seed")


def hwa_rpu_config(device_config: Any, weight_noise: float) -> Any:
    """The device's ``TorchInferenceRPUConfig`` with AIHWKit's HWA weight-noise modifier added.

    Args:
        device_config: A preset name, YAML path or :class:`~romer_aihwkit.devices.DeviceConfig`.
        weight_noise: ``ADD_NORMAL`` std relative to the tile's largest weight (0: no weight noise).

    Returns:
        A fresh ``TorchInferenceRPUConfig`` (periphery, remapping, clipping of the device).
    """
    from aihwkit.simulator.parameters import WeightModifierParameter
    from aihwkit.simulator.parameters.enums import WeightModifierType


    config = load_device_config(device_config)
    # training runs on torch tiles, which reject the C++-only forward non-idealities (read noise, IR
    # drop, ...): train with the rest of the periphery; the trained model is evaluated with all of it
    rpu = config.torch_tile_subset().rpu_config()
    rpu.modifier = WeightModifierParameter(
        type=WeightModifierType.ADD_NORMAL if weight_noise > 0 else WeightModifierType.NONE,
        std_dev=float(weight_noise), rel_to_actual_wmax=True)
    return rpu


def _analog_linear(weight: torch.Tensor, bias: torch.Tensor | None, rpu_factory: Callable[[], Any]) -> nn.Module:
    from aihwkit.nn import AnalogLinear

    out_features, in_features = weight.shape
    layer = AnalogLinear(in_features, out_features, bias=bias is not None, rpu_config=rpu_factory())
    layer.set_weights(weight.detach().float().clone(), None if bias is None else bias.detach().float().clone())
    return layer


class _HWARouter(nn.Module):
    """A transformers-5 router on an analog tile: returns ``(logits, weights, indices)``."""

    def __init__(self, linear: nn.Module, spec: Any, correction_bias: torch.Tensor | None) -> None:
        super().__init__()
        self.linear = linear
        self.spec = spec
        self.correction_bias = None if correction_bias is None else correction_bias.detach().float().clone()

    def forward(self, hidden_states: torch.Tensor):
        hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
        logits = self.linear(hidden).float()
        weights, selected = route(self.spec, logits, self.correction_bias)
        return logits, weights.to(hidden_states.dtype), selected


class _HWAExperts(nn.Module):
    """transformers-5 fused experts, one analog ``gate_up`` and ``down`` tile per expert."""

    def __init__(self, gate_up: list[nn.Module], down: list[nn.Module], act_fn: Callable, has_gate: bool,
                 layout: ExpertLayout) -> None:
        super().__init__()
        self.gate_up = nn.ModuleList(gate_up)
        self.down = nn.ModuleList(down)
        self.act_fn = act_fn
        self.has_gate = has_gate
        self.layout = layout

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden_states)
        for e in top_k_index.unique().tolist():
            token, slot = (top_k_index == e).nonzero(as_tuple=True)
            h = self.gate_up[e](hidden_states[token])
            if self.has_gate:
                gate, up = h.chunk(2, dim=-1)
                h = self.act_fn(gate) * up
            else:
                h = self.act_fn(h)
            y = self.down[e](h) * top_k_weights[token, slot, None]
            out = out.index_add(0, token, y.to(out.dtype))
        return out

    def digital_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The trained weights under the original model's parameter names (:meth:`ExpertLayout.state_dict`)."""
        gate_up = [_weights(t) for t in self.gate_up]
        down = [_weights(t) for t in self.down]
        b1 = [b for _, b in gate_up if b is not None]
        b2 = [b for _, b in down if b is not None]
        return self.layout.state_dict(prefix, [w for w, _ in gate_up], [w for w, _ in down],
                                      torch.stack(b1) if b1 else None, torch.stack(b2) if b2 else None)


@dataclass
class HWAConversionContext:
    """Builds the training tiles of one MoE block for its adapter (implements
    :class:`romer_aihwkit.adapters.ConversionContext`, like the analog layer's
    :class:`~romer_aihwkit.analog.build.AnalogConversionContext`).

    Every router, expert and shared-expert matrix goes on an AIHWKit ``AnalogLinear`` with a torch
    training tile of ``rpu_config_factory``; the adapters decide what those are, exactly as for the
    analog conversion.
    """

    rpu_config_factory: Callable[[], Any]
    layer_index: int
    block_name: str

    def matrix(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str,
               analog: bool = True) -> nn.Module:
        if analog:
            return _analog_linear(weight, bias, self.rpu_config_factory)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear.requires_grad_(False)

    def experts(self, gate_up: Any, down: Any, act_fn: Any, has_gate: bool = True, gate_up_bias: Any = None,
                down_bias: Any = None, layout: ExpertLayout | None = None) -> nn.Module:
        b1, b2 = gate_up_bias or [None] * len(gate_up), down_bias or [None] * len(down)
        return _HWAExperts([_analog_linear(w, b, self.rpu_config_factory) for w, b in zip(gate_up, b1)],
                           [_analog_linear(w, b, self.rpu_config_factory) for w, b in zip(down, b2)],
                           act_fn, has_gate, ExpertLayout.coerce(layout, has_gate))

    def router(self, weight: torch.Tensor, spec: Any, correction_bias: torch.Tensor | None = None) -> nn.Module:
        return _HWARouter(_analog_linear(weight, None, self.rpu_config_factory), spec, correction_bias)

    def block(self, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None,
              shared_expert_gate: nn.Module | None = None, returns_router_logits: bool = False) -> nn.Module:

        return AnalogMoEBlock(router, experts, shared_experts, shared_expert_gate, returns_router_logits)


def _moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module, Any]]:
    found: list[tuple[str, nn.Module, Any]] = list(find_moe_blocks(model))
    if not found:
        raise InputError(f"{type(model).__name__} has no MoE block an adapter recognises: nothing to train with HWA")
    return found


def _attach_training_tiles(model: nn.Module, rpu_factory: Callable[[], Any]) -> list[tuple[str, nn.Module]]:
    """Put every router, expert and shared-expert matrix of ``model`` on a training tile, in place.

    Each block is converted by its adapter with an :class:`HWAConversionContext`.

    Returns:
        ``(module name, module)`` of every training module: routers, experts and ``AnalogLinear``
        matrices (what :func:`_digital_state` writes back and the optimizer trains).
    """
    from aihwkit.nn import AnalogLinear

    for index, (name, block, adapter) in enumerate(_moe_blocks(model)):
        new = adapter.convert(block, HWAConversionContext(rpu_factory, index, name))
        if new is not block:
            model.set_submodule(name, new)
    plan: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{p}.") for p, _ in plan):
            continue
        if isinstance(module, (_HWARouter, _HWAExperts, AnalogLinear)):
            plan.append((name, module))
    return plan


def _weights(tile: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight, bias = cast(Any, tile).get_weights()
    return weight.detach().float(), None if bias is None else bias.detach().float()


def _digital_state(plan: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """The trained weights under the original model's parameter names (original layouts)."""
    state: dict[str, torch.Tensor] = {}
    for path, module in plan:
        if isinstance(module, _HWAExperts):
            state.update(module.digital_state(f"{path}."))
        elif isinstance(module, _HWARouter):
            state[f"{path}.weight"] = _weights(module.linear)[0]
        else:
            weight, bias = _weights(module)
            state[f"{path}.weight"] = weight
            if bias is not None:
                state[f"{path}.bias"] = bias
    return state


def _train_batches(tokenizer: Any, train_text: str, config: HWAConfig) -> torch.Tensor:
    blocks = text_blocks(train_text, tokenizer, seq_len=config.seq_len, split="train", max_blocks=config.train_blocks)
    if blocks.shape[0] < 1:
        raise InputError(f"training text {train_text!r} gives no block of {config.seq_len} tokens")
    return blocks


def hwa_finetune(
    model: nn.Module,
    tokenizer: Any,
    device_config: Any,
    train_text: str = "bundled",
    config: HWAConfig | None = None,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``model``'s routers and experts with AIHWKit hardware-aware training.

    Args:
        model: A digital Hugging Face MoE causal LM (not changed).
        tokenizer: Its tokenizer (to tokenize the training text).
        device_config: The device whose periphery the training tiles simulate (preset, YAML, config).
        train_text: ``"bundled"`` (the bundled ``train`` plays, disjoint from calibration and
            evaluation plays), a text file, a folder of them or a saved dataset.
        config: Training settings (:class:`HWAConfig`).
        progress: Show a progress bar.

    Returns:
        ``(trained, info)``: a digital model of the same class with the trained router/expert
        weights (its config carries ``romer_hwa``), and the training record (settings, the loss of
        every step and its mean over the first and last steps, seconds, peak memory, number of
        trained matrices and parameters).

    Raises:
        InputError: ``model`` is already converted, has no MoE block, or the training text has no
            full block.
    """
    from aihwkit.optim import AnalogOptimizer


    if getattr(model, "analog_state", None) is not None:
        raise InputError("hwa_finetune trains the digital model: pass the model before convert_to_analog_moe "
                         "(which converts in place; convert a copy.deepcopy to keep the digital one)")
    config = config or HWAConfig()

    positions = max_positions_of(model)
    if positions is not None and config.seq_len > positions:
        raise InputError(f"HWA seq_len {config.seq_len} is beyond the model's {positions} positions "
                         "(max_position_embeddings); use a shorter HWAConfig(seq_len=...)")
    device = load_device_config(device_config)
    blocks = _train_batches(tokenizer, train_text, config)
    trained = copy.deepcopy(model).float()
    student = copy.deepcopy(trained)
    student.requires_grad_(False)
    plan = _attach_training_tiles(student, lambda: hwa_rpu_config(device, config.weight_noise))
    params = [p for _, m in plan for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    where = next(model.parameters()).device
    student.to(where).train()
    optimizer = AnalogOptimizer(torch.optim.AdamW, [p for p in params if p.requires_grad], lr=config.lr,
                                weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    fork_devices = [where] if where.type == "cuda" else []
    if where.type == "cuda":
        torch.cuda.reset_peak_memory_stats(where)
    losses: list[float] = []
    start = time.perf_counter()
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"HWA on {device.name}")
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        for _ in steps:
            idx = torch.randint(0, blocks.shape[0], (min(config.batch_size, blocks.shape[0]),), generator=generator)
            batch = blocks[idx].to(where)
            loss = student(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()  # AIHWKit's optimizer also applies the tiles' post-update clip/remap
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    state = _digital_state(plan)
    missing = sorted(set(state) - set(dict(trained.named_parameters())))
    if missing:
        raise RuntimeError(f"HWA write-back found no parameter {missing[0]} in {type(model).__name__}")
    with torch.no_grad():
        for name, value in trained.named_parameters():
            if name in state:
                value.copy_(state[name].to(value.dtype))
    head = max(1, min(10, len(losses) // 5))
    info = {
        "device": device.name, "train_text": train_text, "config": asdict(config),
        "trained_matrices": sum(2 * len(m.gate_up) if isinstance(m, _HWAExperts) else 1 for _, m in plan),
        "trained_parameters": sum(p.numel() for p in params),
        "loss_first": sum(losses[:head]) / head, "loss_last": sum(losses[-head:]) / head,
        "losses": [round(x, 5) for x in losses],
        "seconds": seconds, "seconds_per_step": seconds / config.steps,
        "peak_memory_mb": _peak_memory_mb(where),
    }
    setattr(trained.config, HWA_MARK, {k: info[k] for k in ("device", "train_text", "config")})
    return trained.eval(), info


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the process so far: CUDA allocations on GPU, else the resident set (RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def is_hwa_trained(model: nn.Module) -> bool:
    """Whether ``model`` came out of :func:`hwa_finetune` (its config records the training)."""
    return bool(getattr(getattr(model, "config", None), HWA_MARK, None))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", Path(str(text).rstrip("/")).name or str(text)).strip("-._") or "model"


def _tokenizer_digest(tokenizer: Any) -> str:
    """Hash of what a tokenizer does: its serialised fast tokenizer, else its class and vocabulary."""
    if tokenizer is None:
        return "none (the bundled tokenizer)"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hwa_cache_key(model: nn.Module, tokenizer: Any, device_config: Any, train_text: str = "bundled",
                  config: HWAConfig | None = None, fingerprint: str = "", stress: str | None = None) -> dict[str, Any]:
    """Everything that determines an HWA-trained checkpoint, by content (never by path or name).

    Fields: ``weights`` (a full hash of the digital model passed in, so a stressed or otherwise
    changed model never meets a checkpoint trained from another), ``files`` (``fingerprint``, e.g.
    the content hash of the model folder), ``stress`` (the stress spec applied), ``tokenizer``,
    ``device`` (the device config's content), ``train_text`` (the training text's content),
    ``config`` (every :class:`HWAConfig` field) and ``code`` (the simulation code and library
    versions, :func:`~romer_aihwkit.checked_files.code_fingerprint`).
    """

    config = config or HWAConfig()
    return {"weights": weights_hash(model, full=True), "files": fingerprint, "stress": stress_label(stress),
            "tokenizer": _tokenizer_digest(tokenizer), "device": device_fingerprint(device_config),
            "train_text": text_digest(train_text), "config": asdict(config), "code": code_fingerprint()}


def hwa_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    model_id: str,
    device_config: Any,
    cache_dir: str | os.PathLike,
    train_text: str = "bundled",
    config: HWAConfig | None = None,
    fingerprint: str = "",
    progress: bool = False,
    stress: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The HWA-trained ``model`` for ``device_config``: loaded from ``cache_dir`` or trained and saved there.

    The checkpoint folder ``cache_dir/<model>_<device>_steps<N>_seed<S>_<hash>`` holds the
    ``save_pretrained`` files (the original layout, safetensors), the tokenizer and ``hwa.json``
    (the training record and its key). ``hash`` covers :func:`hwa_cache_key`: the content of the
    model passed in and of its files (``fingerprint``), the ``stress`` spec applied to it, the
    tokenizer, the device's content, the training text's content, every :class:`HWAConfig` field
    and the code. A folder whose recorded key differs, or that lacks weights, is trained anew.

    Returns:
        ``(trained model, training record)``.
    """

    config = config or HWAConfig()
    device = load_device_config(device_config)
    key = hwa_cache_key(model, tokenizer, device, train_text, config, fingerprint, stress)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / f"{_slug(model_id)}_{_slug(device.name)}_steps{config.steps}_seed{config.seed}_{digest}"
    record = folder / "hwa.json"
    if record.is_file() and (folder / "config.json").is_file():
        saved = _read_record(record)
        if saved.get("key") == key:
            trained, _ = load_model(str(folder))
            return trained.to(next(model.parameters()).device), saved
    if folder.exists():  # no weights (e.g. results shipped without the checkpoint) or another key: train anew
        shutil.rmtree(folder)
    trained, info = hwa_finetune(model, tokenizer, device, train_text, config, progress=progress)
    info["model"] = model_id
    info["key"] = key
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cast(Any, trained).save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / "hwa.json").write_text(json.dumps(info, indent=2))
    if folder.exists():  # another process finished the same training first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return trained, info


def _read_record(path: Path) -> dict[str, Any]:
    """``hwa.json`` of a cached checkpoint (an empty record when it is damaged: the checkpoint is retrained)."""

    try:
        return read_json(path, "HWA training record")
    except ArtifactError:
        return {}
