"""transformers internals this package uses, behind one function each.

The converter keeps ``output_router_logits=True`` working on converted routers through
transformers' output-capturing hooks (``transformers.utils.output_capturing`` and a model's
``_can_record_outputs`` table); the model-folder check compares a checkpoint with the layout
transformers loads and saves (``transformers.core_model_loading.revert_weight_conversion``, the
tied and ignorable keys); the expert adapters refuse experts with a custom gate
(``transformers.integrations.moe._default_apply_gate``). None of these is documented API. When a
transformers release renames or drops one, the function here raises
:class:`~romer_aihwkit.errors.LibraryChangedError` naming the transformers version and the
internal, instead of silently skipping what it did (router logits that stop being recorded, a
folder check that stops seeing converted layouts).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from ..errors import LibraryChangedError
from . import changed_message, installed_version

__all__ = ["SUPPORTED", "has_custom_gate", "ignored_missing_keys", "install_capturing_hooks",
           "install_router_logits_hooks", "records_outputs", "saved_layout", "tied_weight_keys", "version"]

SUPPORTED = "transformers>=5,<6"
"""The transformers releases these functions are written against (``pyproject.toml``)."""


def version() -> str:
    """The installed transformers version (``"not installed"`` without it)."""
    return installed_version("transformers")


def _changed(what: str, detail: object) -> LibraryChangedError:
    return LibraryChangedError(changed_message("transformers", version(), what, detail, SUPPORTED))


def _internal(module: str, name: str) -> Any:
    """``module.name``, or a :class:`LibraryChangedError` naming it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise _changed(f"{module}.{name}", f"{type(exc).__name__}: {exc}") from None


def _is_hf_model(model: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _model_attr(model: Any, name: str, default: Any) -> Any:
    """A transformers model's internal attribute; a plain module has none (``default``)."""
    if not _is_hf_model(model):
        return getattr(model, name, default)
    if not hasattr(model, name):
        raise _changed(f"PreTrainedModel.{name}", f"{type(model).__name__} has no {name}")
    return getattr(model, name)


# ------------------------------------------------------------------------ output capturing (router logits)
def records_outputs(model: Any) -> dict[str, Any]:
    """The outputs ``model`` records by module class (``_can_record_outputs``; ``{}`` when none)."""
    return dict(_model_attr(model, "_can_record_outputs", None) or {})


def install_capturing_hooks(model: Any) -> None:
    """Install transformers' own output-capturing hooks on every module of ``model`` that records outputs.

    transformers attaches them by class on the first forward; installing them before a conversion
    replaces modules keeps them on the original ones (and not re-attached to the replacements).
    """
    install = _internal("transformers.utils.output_capturing", "maybe_install_capturing_hooks")
    for module in model.modules():
        if getattr(module, "_can_record_outputs", None):
            install(module)


def install_router_logits_hooks(model: Any, routers: Iterable[Any]) -> int:
    """Record each of ``routers``' outputs as ``router_logits`` (``output_router_logits=True``), where the
    model records router logits at all.

    Returns:
        How many routers were hooked (0 when the model records no router logits).
    """
    if "router_logits" not in records_outputs(model):
        return 0
    install = _internal("transformers.utils.output_capturing", "install_output_capuring_hook")
    count = 0
    for router in routers:
        install(router, "router_logits", 0)
        count += 1
    return count


# ------------------------------------------------------------------------ checkpoint layouts
def saved_layout(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` in the layout ``save_pretrained`` writes for ``model`` (transformers converts some
    families' experts on load, e.g. per-expert matrices into fused ones, and reverts that on save).

    Raises:
        LibraryChangedError: ``revert_weight_conversion`` is gone or takes other arguments.
    """
    revert = _internal("transformers.core_model_loading", "revert_weight_conversion")
    try:
        return dict(revert(model, dict(state_dict)))
    except TypeError as exc:
        raise _changed("transformers.core_model_loading.revert_weight_conversion", exc) from None


def tied_weight_keys(model: Any) -> set[str]:
    """Names of the weights ``model`` ties to another (``all_tied_weights_keys``; not in a checkpoint)."""
    return set(_model_attr(model, "all_tied_weights_keys", None) or {})


def ignored_missing_keys(model: Any) -> list[str]:
    """Patterns of weights ``model`` may miss in a checkpoint (``_keys_to_ignore_on_load_missing``)."""
    return list(_model_attr(model, "_keys_to_ignore_on_load_missing", None) or [])


# ------------------------------------------------------------------------ experts
def has_custom_gate(experts: Any) -> bool:
    """Whether a transformers-5 experts module gates with its own function (not ``_default_apply_gate``)."""
    default = _internal("transformers.integrations.moe", "_default_apply_gate")
    return getattr(type(experts), "_apply_gate", default) is not default
