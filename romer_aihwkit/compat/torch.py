"""torch internals this package uses, behind one function each.

The batched forward of AIHWKit's tiles (:mod:`romer_aihwkit.analog.fast`) steps aside while any
forward hook could observe the layer (e.g. AIHWKit's ``calibrate_input_ranges`` registers one),
which it reads from torch's hook tables: the global ones in ``torch.nn.modules.module`` and each
module's ``_forward_hooks`` / ``_forward_pre_hooks``. None of these is documented API; when a
torch release renames them, :func:`has_forward_hooks` raises
:class:`~romer_aihwkit.errors.LibraryChangedError` naming the torch version, instead of running the
batched forward under a hook it cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..errors import LibraryChangedError

__all__ = ["has_forward_hooks"]

_GLOBAL = ("_global_forward_hooks", "_global_forward_pre_hooks")
_LOCAL = ("_forward_hooks", "_forward_pre_hooks")


def _changed(what: str) -> LibraryChangedError:
    return LibraryChangedError(f"torch {torch.__version__} changed {what}; romer-aihwkit reads torch's forward-hook "
                               "tables to know when its batched analog forward must step aside: install a torch "
                               "version the project supports (see pyproject.toml)")


def has_forward_hooks(modules: Iterable[nn.Module]) -> bool:
    """Whether a global forward (pre-)hook is registered, or one on any of ``modules``.

    Raises:
        LibraryChangedError: torch no longer keeps its hooks where this reads them.
    """
    for name in _GLOBAL:
        if not hasattr(_module, name):
            raise _changed(f"torch.nn.modules.module.{name}")
        if getattr(_module, name):
            return True
    for m in modules:
        for name in _LOCAL:
            hooks = getattr(m, name, None)
            if hooks is None:
                raise _changed(f"nn.Module.{name} (on {type(m).__name__})")
            if hooks:
                return True
    return False
