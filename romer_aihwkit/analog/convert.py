"""``convert_to_analog_moe``: put every MoE router and expert of a Hugging Face model on analog tiles."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..adapters import MoEAdapter, find_moe_blocks, list_adapters
from ..adapters.base import ExpertLayout
from ..compat import transformers as transformers_compat
from ..devices import load_device_config
from ..errors import InputError, UserError
from .build import AnalogConversionContext
from .engines import mixed_bank_error, resolve_engine
from .model import AnalogMoEModel, mark_converted
from .placement import (
    MatrixSite,
    Placement,
    PlacementPlan,
    as_placement,
    default_placement,
    matrix_site,
    normalise_digital_experts,
    plan_placement,
)
from .programming import drift_analog_weights, program_analog_weights
from .progress import progress_bar
from .state import AnalogState, analog_state
from .summary import analog_summary
from .trace import find_routers

__all__ = [
    "convert_to_analog_moe",
    "convertible_blocks",
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


def _looks_like_moe(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return ("moe" in name and "model" not in name and "decoder" not in name) or isinstance(getattr(module, "experts", None), nn.Module)


def convertible_blocks(model: nn.Module) -> list[tuple[str, nn.Module, MoEAdapter]]:
    """``(name, block, adapter)`` of every MoE block of ``model``, in module order.

    Raises:
        UnsupportedMoEError: MoE-looking blocks no registered adapter converts.
        NoMoEBlocksError: No MoE block at all.
    """
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


class _SiteRecorder:
    """A ConversionContext that builds nothing: it lists the matrix sites an adapter asks for."""

    def __init__(self, layer_index: int, block_name: str) -> None:
        self.layer_index = layer_index
        self.block_name = block_name
        self.sites: list[MatrixSite] = []

    def _add(self, role: str, name: str, expert: int | None = None) -> nn.Module:
        self.sites.append(matrix_site(self.layer_index, self.block_name, role, name, expert))
        return nn.Identity()

    def matrix(self, weight: Any, bias: Any, role: str, name: str, analog: bool = True) -> nn.Module:
        return self._add(role, name) if analog else nn.Identity()

    def experts(self, gate_up: Any, down: Any, act_fn: Any, has_gate: bool = True, gate_up_bias: Any = None,
                down_bias: Any = None, layout: ExpertLayout | None = None) -> nn.Module:
        for part in ("gate_up", "down"):
            for e in range(len(gate_up)):
                self._add("expert", f"experts.{e}.{part}", e)
        return nn.Identity()

    def router(self, weight: Any, spec: Any, correction_bias: Any = None) -> nn.Module:
        return self._add("router", "router")

    def block(self, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None,
              shared_expert_gate: nn.Module | None = None, returns_router_logits: bool = False) -> nn.Module:
        return nn.Identity()


def _attention_modules(model: nn.Module, moe_names: list[str]) -> Iterator[tuple[str, nn.Module]]:
    """Attention modules outside the MoE blocks (their ``nn.Linear`` projections are role ``attention``)."""
    for name, module in list(model.named_modules()):
        last = name.rsplit(".", 1)[-1].lower()
        if ("attn" in last or "attention" in last) and not any(name.startswith(p + ".") for p in moe_names):
            yield name, module


def _sites(model: nn.Module, blocks: list[tuple[str, nn.Module, MoEAdapter]]) -> list[MatrixSite]:
    """Every matrix site conversion will ask the placement about, found without touching ``model``.

    Each adapter converts a structural copy of its block (sharing the tensors) with a context that
    only records, so the sites are exactly the ones the real conversion asks about.
    """
    sites: list[MatrixSite] = []
    for index, (name, block, adapter) in enumerate(blocks):
        recorder = _SiteRecorder(index, name)
        shared = {id(t): t for t in (*block.parameters(), *block.buffers())}
        adapter.convert(copy.deepcopy(block, shared), recorder)
        sites.extend(recorder.sites)
    seen = {s.name for s in sites}
    for name, module in _attention_modules(model, [n for n, _, _ in blocks]):
        for sub, child in module.named_modules():
            site = matrix_site(-1, name, "attention", sub)
            if sub and isinstance(child, nn.Linear) and site.name not in seen:
                seen.add(site.name)
                sites.append(site)
    return sites


def _choose_placement(config: Any, placement: Any, analog_router: bool, analog_attention: bool,
                      digital_experts: Any) -> Placement:
    if placement is None:
        return default_placement(config, analog_router, analog_attention, digital_experts)
    given = [k for k, v, default in (("analog_router", analog_router, True), ("analog_attention", analog_attention, False),
                                     ("digital_experts", digital_experts, None)) if v is not default]
    if given:
        raise InputError(f"placement= decides every matrix; it cannot be combined with {', '.join(given)} "
                         "(build one placement, e.g. by_role(..., default=default_placement(device, ...)))")
    return as_placement(placement)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


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
    placement: Placement | Mapping[str, Any] | None = None,
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
        placement: Where each matrix goes, instead of ``analog_router``, ``analog_attention`` and
            ``digital_experts`` (refused together with them): a function
            :class:`~romer_aihwkit.analog.placement.MatrixSite` -> device config, preset name, YAML
            path or :data:`~romer_aihwkit.analog.placement.DIGITAL`, or a ``{role: device}`` table
            (roles not in it stay digital); see :mod:`romer_aihwkit.analog.placement`. It is asked
            once per matrix, before the model is touched. ``device_config`` is then only the device
            recorded for a model the placement leaves entirely digital. The stacked engine holds one
            device per expert bank (one MoE layer's ``gate_up`` or ``down`` matrices); a placement
            that mixes devices within one needs ``engine="aihwkit"``.

    Returns:
        The same model object, converted: its class is now a subclass of :class:`AnalogMoEModel`
        and of its own class, with typed ``program_analog_weights``, ``drift_analog_weights``,
        ``save_pretrained`` (digital weights), ``save_chip_state`` / ``load_chip_state``,
        ``save_calibration`` / ``load_calibration`` and the ``analog_state`` property.

    Raises:
        NoMoEBlocksError: the model has no MoE block.
        UnsupportedMoEError: it has MoE blocks of an unregistered family.
        InputError: a bad placement (unknown role, device that does not load, answer that is no
            device, layer or expert out of range), given together with the keywords it replaces,
            or mixing devices in one expert bank with the stacked engine.
    """
    if isinstance(getattr(model, "analog_state", None), AnalogState):
        raise ValueError("this model is already converted; load a fresh copy to convert it again")
    config = load_device_config(device_config)
    chosen = _choose_placement(config, placement, analog_router, analog_attention, digital_experts)
    blocks = convertible_blocks(model)
    n_experts = [adapter.num_experts(block) for _, block, adapter in blocks]
    loaded = {os.fspath(device_config): config} if isinstance(device_config, (str, os.PathLike)) else {}
    plan = plan_placement(chosen, _sites(model, blocks), n_experts, loaded)  # checked before the model is touched
    devices = plan.devices or [config]
    tile_engine = resolve_engine(devices, engine, reference, reference_dir, tile_dtype)  # refuses before touching
    if plan.mixed_banks() and not tile_engine.mixed_banks:
        raise mixed_bank_error(plan.mixed_banks()[0])
    factories = [tile_engine.rpu_config_factory(d) for d in devices]
    tiles = _tiles(plan, factories)
    main = plan.main_device() or config
    rpu_factory = factories[devices.index(main)]
    was_training = model.training
    transformers_compat.install_capturing_hooks(model)  # now, so they are not re-attached by class later

    state = _state(plan, placement is None, main, analog_router, analog_attention, digital_experts, n_experts)
    state.engine, state.reference, state.devices = tile_engine.name, tile_engine.store, list(devices)
    bar = progress_bar(len(blocks), "converting", "layer", progress)
    for index, (name, block, adapter) in enumerate(blocks):
        device = _module_device(block)
        ctx = AnalogConversionContext(rpu_factory, index, name, tiles, engine=tile_engine)
        new = adapter.convert(block, ctx)
        new.to(device)
        if new is not block:
            model.set_submodule(name, new)
        state.blocks.append((name, adapter.family))
        bar.update(1)
    bar.close()

    converted = 0
    for name, module in _attention_modules(model, [n for n, _ in state.blocks]):
        device = _module_device(module)
        ctx = AnalogConversionContext(rpu_factory, -1, name, tiles, engine=tile_engine)
        for sub, child in list(module.named_modules()):
            if sub and isinstance(child, nn.Linear) and plan.analog(matrix_site(-1, name, "attention", sub).name):
                # the matrix keeps its historical name "<module>..<sub>" (its tiles' seeds derive from it)
                module.set_submodule(sub, ctx.matrix(child.weight, child.bias, "attention", "." + sub))
                converted += 1
        module.to(device)
    if placement is None and analog_attention and converted == 0:
        warnings.warn("analog_attention=True but no attention projections were found to convert", stacklevel=2)

    model.train(was_training)  # new modules start in training mode; match the model
    transformers_compat.install_router_logits_hooks(model, find_routers(model))
    return mark_converted(model, state)


def _tiles(plan: PlacementPlan, factories: list[Callable[[], Any]]) -> Callable[[MatrixSite], Callable[[], Any] | None]:
    """The plan as the conversion context asks it: a site's rpu_config factory, or ``None`` (digital)."""

    def tiles(site: MatrixSite) -> Callable[[], Any] | None:
        index = plan.where.get(site.name)
        if index is None:
            raise RuntimeError(f"conversion built matrix {site.name!r}, which the placement was never asked about "
                               "(the adapter converts differently from its dry run)")
        return None if index < 0 else factories[index]

    return tiles


def _state(plan: PlacementPlan, keywords: bool, main: Any, analog_router: bool, analog_attention: bool,
           digital_experts: Any, n_experts: list[int]) -> AnalogState:
    """The :class:`AnalogState` of a conversion: the keywords' fields, plus the placement when they cannot say it."""
    if keywords:  # recorded as given (e.g. analog_attention=True on a model without attention projections)
        digital = normalise_digital_experts(digital_experts, n_experts)
        return AnalogState(device_config=main, analog_attention=analog_attention, analog_router=analog_router,
                           digital_experts={k: sorted(v) for k, v in digital.items()})
    words, exact = plan.keywords()
    return AnalogState(device_config=main, analog_attention=words["analog_attention"],
                       analog_router=words["analog_router"], digital_experts=words["digital_experts"],
                       placement=None if exact else plan.record())
