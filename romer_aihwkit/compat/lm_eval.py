"""lm-evaluation-harness internals this package uses, behind one function each.

:func:`romer_aihwkit.evaluation.evaluate_tasks` runs lm-eval quietly: it replaces the progress
bars of lm-eval's task, model and Hugging Face modules (their module-level ``tqdm``) and skips the
environment report of every call (``lm_eval.evaluator.add_env_info`` and
``get_git_commit_hash``, which run ``git describe`` and ``torch.utils.collect_env``). None of
these names is documented API. When an lm-eval release renames or moves one, :func:`quiet`
raises :class:`~romer_aihwkit.errors.LibraryChangedError` naming the lm-eval version and the
internal, instead of silently letting progress bars and subprocesses back in. :func:`leaf_tasks`
reads the result layout (``results``, ``group_subtasks``) and refuses another one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from ..errors import LibraryChangedError
from . import changed_message, installed_version

__all__ = ["ENV_REPORT", "SUPPORTED", "TQDM_MODULES", "leaf_tasks", "quiet", "version"]

SUPPORTED = "lm-eval>=0.4.13,<0.5"
"""The lm-eval releases these functions are written against (``pyproject.toml``)."""

TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")
"""lm-eval modules whose module-level ``tqdm`` draws progress bars during an evaluation."""

ENV_REPORT = ("add_env_info", "get_git_commit_hash")
"""Functions ``lm_eval.evaluator`` calls on every evaluation to report the environment."""


def version() -> str:
    """The installed lm-eval version (``"not installed"`` without it)."""
    return installed_version("lm_eval")


def _changed(what: str, detail: object) -> LibraryChangedError:
    return LibraryChangedError(changed_message("lm-eval", version(), what, detail, SUPPORTED))


def _no_env_info(*args: Any, **kwargs: Any) -> None:
    return None


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _changed(f"the module {name}", exc) from None


def _require(module: Any, name: str) -> Any:
    if not hasattr(module, name):
        raise _changed(f"{module.__name__}.{name}", f"{module.__name__} has no {name}")
    return getattr(module, name)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence lm-eval's progress bars and skip its per-call environment report (nothing when not ``enabled``).

    Raises:
        LibraryChangedError: A module or name of :data:`TQDM_MODULES` / :data:`ENV_REPORT` is gone.
    """
    if not enabled:
        yield
        return
    evaluator = _module("lm_eval.evaluator")
    patches: list[tuple[Any, str, Any, Any]] = [(evaluator, n, _require(evaluator, n), _no_env_info) for n in ENV_REPORT]
    for name in TQDM_MODULES:
        module = _module(name)
        real = _require(module, "tqdm")

        def silent(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            kwargs["disable"] = True
            return _real(*args, **kwargs)

        patches.append((module, "tqdm", real, silent))
    for module, name, _, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, real, _ in patches:
            setattr(module, name, real)


def leaf_tasks(raw: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """``(results per task, the tasks that are no group)`` of a ``simple_evaluate`` result.

    Raises:
        LibraryChangedError: The result has no ``results`` / ``group_subtasks`` mappings.
    """
    results, groups = raw.get("results"), raw.get("group_subtasks")
    if not isinstance(results, dict) or not isinstance(groups, dict):
        raise _changed("the result of simple_evaluate", f"keys {sorted(raw)[:8]}, expected 'results' and "
                       "'group_subtasks' mappings")
    return results, {t for t, subtasks in groups.items() if not subtasks} or set(results)
