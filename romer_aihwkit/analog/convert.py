"""``convert_to_analog_moe``: put every MoE router and expert of a Hugging Face model on analog tiles."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..adapters import MoEAdapter, find_moe_blocks, list_adapters
from ..adapters.base import convert_linears
from ..errors import UserError
from .build import AnalogConversionContext
from .engines import resolve_engine
from .model import AnalogMoEModel, mark_converted
from .programming import drift_analog_weights, program_analog_weights
from .progress import progress_bar
from .router import AnalogRouter
from .state import AnalogState, analog_state
from .summary import analog_summary
from .trace import find_routers

__all__ = [
    "convert_to_analog_moe",
    "analog_summary",
    "program_analog_weights",
    "drift_analog_weights",
    "NoMoEBlocksError",
    "UnsupportedMoEError",
    "AnalogState",
    "AnalogMoEModel",
    "analog_state",
]


class NoMoEBlocksError(UserError, ValueError):
    """The model has no Mixture-of-Experts block."""


class UnsupportedMoEError(UserError, ValueError):
    """The model has MoE-looking blocks that no registered adapter converts."""


def _normalise_digital_experts(digital_experts, n_blocks: int, n_experts: list[int]) -> dict[int, frozenset[int]]:
    if digital_experts is None:
        return {}
    pairs: list[tuple[int, int]] = []
    if isinstance(digital_experts, Mapping):
        for layer, experts in digital_experts.items():
            pairs.extend((int(layer), int(e)) for e in experts)
    else:
        for item in digital_experts:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"digital_experts entries must be (layer, expert) pairs, got {item!r}")
            pairs.append((int(item[0]), int(item[1])))
    out: dict[int, set[int]] = {}
    for layer, expert in pairs:
        if not 0 <= layer < n_blocks:
            raise ValueError(f"digital_experts: MoE layer {layer} out of range (model has {n_blocks} MoE layers)")
        if not 0 <= expert < n_experts[layer]:
            raise ValueError(f"digital_experts: expert {expert} out of range for MoE layer {layer} ({n_experts[layer]} experts)")
        out.setdefault(layer, set()).add(expert)
    return {k: frozenset(v) for k, v in out.items()}


def _looks_like_moe(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return ("moe" in name and "model" not in name and "decoder" not in name) or isinstance(getattr(module, "experts", None), nn.Module)


def _find_blocks(model: nn.Module) -> list[tuple[str, nn.Module, MoEAdapter]]:
    found = find_moe_blocks(model)
    if found:
        return found
    suspects = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if n and _looks_like_moe(m)]
    if suspects:
        raise UnsupportedMoEError(
            f"{type(model).__name__} has MoE blocks no adapter converts, e.g. {suspects[0]}. "
            f"Supported families: {', '.join(list_adapters())}. To add one, subclass "
            "romer_aihwkit.adapters.MoEAdapter (where the router/experts are, a RoutingSpec) and call "
            "romer_aihwkit.register_adapter(YourAdapter())."
        )
    raise NoMoEBlocksError(
        f"{type(model).__name__} has no Mixture-of-Experts block to convert "
        f"(supported families: {', '.join(list_adapters())})"
    )


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def _hook_router_logits(model: nn.Module, routers: list[AnalogRouter]) -> None:
    """Keep ``output_router_logits=True`` working: transformers records router outputs by class."""
    try:
        from transformers.utils.output_capturing import install_output_capuring_hook
    except ImportError:  # pragma: no cover - older transformers
        return
    records = getattr(model, "_can_record_outputs", None) or {}
    if "router_logits" not in records:
        return
    for router in routers:
        install_output_capuring_hook(router, "router_logits", 0)


def convert_to_analog_moe(
    model: nn.Module,
    device_config="pcm",
    analog_router: bool = True,
    analog_attention: bool = False,
    digital_experts: Iterable[tuple[int, int]] | Mapping[int, Iterable[int]] | None = None,
    engine: str = "stacked",
    reference: str = "auto",
    reference_dir: str | None = None,
    tile_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> AnalogMoEModel:
    """Map the router and every expert of each MoE block of ``model`` onto AIHWKit analog tiles.

    The model is converted in place and returned. Each expert matrix and each router gets its own
    tile(s); shared experts go analog too; attention and ``lm_head`` stay digital unless
    ``analog_attention``. Call ``model.program_analog_weights(seed=...)`` and
    ``model.drift_analog_weights(t_inference=...)`` to simulate one chip instance.

    Args:
        model: a Hugging Face causal LM (or any module) with MoE blocks of a registered family.
        device_config: a preset name, a YAML path or a :class:`~romer_aihwkit.devices.DeviceConfig`.
        analog_router: put the routers on tiles (``False``: digital routers, the ``digital-router`` baseline).
        analog_attention: put attention projections on tiles too.
        digital_experts: ``(moe_layer, expert)`` pairs (or ``{layer: [experts]}``) kept digital.
        engine: ``"stacked"`` (default): each layer's experts as stacked tensors programmed in a few
            vectorised passes with AIHWKit's noise models (:mod:`romer_aihwkit.analog.stacked`);
            ``"aihwkit"``: one AIHWKit ``AnalogLinear`` per matrix, the reference path. A device
            setting the stacked engine does not reproduce falls back to ``"aihwkit"`` with a warning.
        reference: where the stacked engine keeps the clean weights it programs from: ``"auto"``,
            ``"memory"``, ``"cpu"`` or ``"spill"`` (see :class:`~romer_aihwkit.analog.reference.ReferenceStore`).
            The stacked engine takes over the experts' weight storage for its tiles.
        reference_dir: folder for ``reference="spill"`` files (default: a temporary folder).
        tile_dtype: dtype the stacked engine holds programmed expert tiles in (default: the model's).
            ``torch.float32`` for a bf16 model keeps the tile matmul's output unrounded (twice the
            tile memory); the default bf16 tiles add a rounding error of about 1 % of the
            programming noise (``benchmarks/bench_bf16_tiles.py``).
        progress: Show a progress bar over the MoE blocks (only once conversion takes a few seconds).

    Returns:
        The same model object, converted: its class is now a subclass of :class:`AnalogMoEModel`
        and of its own class, with typed ``program_analog_weights``, ``drift_analog_weights``,
        ``save_pretrained`` (digital weights), ``save_chip_state`` / ``load_chip_state``,
        ``save_calibration`` / ``load_calibration`` and the ``analog_state`` property.

    Raises:
        NoMoEBlocksError: the model has no MoE block.
        UnsupportedMoEError: it has MoE blocks of an unregistered family.
    """
    from ..devices import load_device_config

    if isinstance(getattr(model, "analog_state", None), AnalogState):
        raise ValueError("this model is already converted; load a fresh copy to convert it again")
    config = load_device_config(device_config)
    chosen = resolve_engine(config, engine, reference, reference_dir, tile_dtype)  # refuses before touching the model
    rpu_factory = chosen.rpu_config_factory(config)
    was_training = model.training
    blocks = _find_blocks(model)
    n_experts = [adapter.num_experts(block) for _, block, adapter in blocks]
    digital = _normalise_digital_experts(digital_experts, len(blocks), n_experts)

    try:  # install transformers' own output hooks now, so they are not re-attached by class later
        from transformers.utils.output_capturing import maybe_install_capturing_hooks

        for module in model.modules():
            if getattr(module, "_can_record_outputs", None):
                maybe_install_capturing_hooks(module)  # type: ignore[arg-type]  # any module that records outputs
    except ImportError:  # pragma: no cover
        pass

    state = AnalogState(
        device_config=config,
        analog_attention=analog_attention,
        analog_router=analog_router,
        digital_experts={k: sorted(v) for k, v in digital.items()},
        engine=chosen.name,
        reference=chosen.store,
    )
    bar = progress_bar(len(blocks), "converting", "layer", progress)
    for index, (name, block, adapter) in enumerate(blocks):
        device = _module_device(block)
        ctx = AnalogConversionContext(
            rpu_config_factory=rpu_factory,
            layer_index=index,
            block_name=name,
            analog_router=analog_router,
            digital_experts=digital.get(index, frozenset()),
            engine=chosen,
        )
        new = adapter.convert(block, ctx)
        new.to(device)
        if new is not block:
            model.set_submodule(name, new)
        state.blocks.append((name, adapter.family))
        bar.update(1)
    bar.close()

    if analog_attention:
        converted = 0
        moe_names = [n for n, _ in state.blocks]
        for name, module in list(model.named_modules()):
            last = name.rsplit(".", 1)[-1].lower()
            if ("attn" in last or "attention" in last) and not any(name.startswith(p + ".") for p in moe_names):
                device = _module_device(module)
                n = convert_linears(
                    module,
                    AnalogConversionContext(rpu_factory, -1, name, engine=chosen),
                    "attention",
                    prefix="",
                )
                module.to(device)
                converted += n
        if converted == 0:
            warnings.warn("analog_attention=True but no attention projections were found to convert", stacklevel=2)

    model.train(was_training)  # new modules start in training mode; match the model
    _hook_router_logits(model, find_routers(model))
    return mark_converted(model, state)
