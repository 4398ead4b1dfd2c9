"""MoE family adapters and their registry.

Built-in adapters are listed here explicitly (no import side effects). To add a family, write a
:class:`MoEAdapter` subclass in one small module and call :func:`register_adapter` with an instance
(see ``docs`` in README: "Adding a MoE family").
"""

from __future__ import annotations

from torch import nn

from .base import ConversionContext, ExpertLayout, MoEAdapter, UnsupportedLayoutError
from .deepseek_v2 import DeepseekV2Adapter
from .deepseek_v3 import DeepseekV3Adapter
from .legacy import LegacyModuleListAdapter
from .mixtral import MixtralAdapter
from .olmoe import OlmoeAdapter
from .qwen2_moe import Qwen2MoeAdapter
from .qwen3_moe import Qwen3MoeAdapter
from .routing import RoutingSpec, route

__all__ = [
    "MoEAdapter",
    "ConversionContext",
    "ExpertLayout",
    "RoutingSpec",
    "UnsupportedLayoutError",
    "route",
    "register_adapter",
    "unregister_adapter",
    "list_adapters",
    "find_adapter",
    "find_moe_blocks",
]

_REGISTRY: list[MoEAdapter] = []


def register_adapter(adapter: MoEAdapter, *, first: bool = False) -> MoEAdapter:
    """Register a family adapter. Duplicate family names raise ``ValueError``.

    Args:
        adapter: an instance of a :class:`MoEAdapter` subclass.
        first: try it before the already registered adapters (to override a built-in match).
    """
    if not isinstance(adapter, MoEAdapter):
        raise TypeError(f"expected a MoEAdapter instance, got {type(adapter).__name__}")
    if not adapter.family:
        raise ValueError(f"{type(adapter).__name__} must set a non-empty `family`")
    if any(a.family == adapter.family for a in _REGISTRY):
        raise ValueError(f"an adapter for family {adapter.family!r} is already registered")
    _REGISTRY.insert(0 if first else len(_REGISTRY), adapter)
    return adapter


def unregister_adapter(family: str) -> None:
    for adapter in _REGISTRY:
        if adapter.family == family:
            _REGISTRY.remove(adapter)
            return
    raise ValueError(f"no adapter for family {family!r}; registered: {list_adapters()}")


def list_adapters() -> list[str]:
    """Registered family names, in matching order."""
    return [a.family for a in _REGISTRY]


def find_adapter(module: nn.Module) -> MoEAdapter | None:
    """The first registered adapter that matches ``module``, or ``None``."""
    for adapter in _REGISTRY:
        if adapter.matches(module):
            return adapter
    return None


def find_moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module, MoEAdapter]]:
    """``(name, block, adapter)`` of every outermost module of ``model`` a registered adapter converts."""
    found: list[tuple[str, nn.Module, MoEAdapter]] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix, _, _ in found):
            continue
        adapter = find_adapter(module)
        if adapter is not None:
            found.append((name, module, adapter))
    return found


for _adapter in (
    OlmoeAdapter(),
    Qwen2MoeAdapter(),
    Qwen3MoeAdapter(),
    MixtralAdapter(),
    DeepseekV2Adapter(),
    DeepseekV3Adapter(),
    LegacyModuleListAdapter(),  # structural match: keep last
):
    register_adapter(_adapter)
