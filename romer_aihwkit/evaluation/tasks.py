"""Downstream tasks through lm-evaluation-harness, on an in-memory (converted, programmed) model.

:func:`evaluate_tasks` wraps the model with lm-eval's ``HFLM(pretrained=model, tokenizer=...)``,
so a chip instance is evaluated as it is (no saving, no reloading), and runs the tasks through a
``TaskManager`` that knows the bundled tasks (``romer_aihwkit/bundled/tasks``) and the folders in
``include_path`` (lm-eval's own task-YAML folders). Task names are lm-eval's: a bundled task, a
task of an ``include_path`` folder, or one of lm-eval's own (those download their data from the
Hugging Face hub, so they need the hub or its cache).

Task code is opt-in: an lm-eval task YAML can name Python code with ``!function`` (lm-eval imports
and runs it), so an ``include_path`` folder holding such a tag is refused unless
``trust_task_code=True`` (``--trust-task-code``), the way ``trust_remote_code`` guards model code.
The bundled tasks (whose YAMLs use the bundled ``utils.py``) are trusted.

lm-eval is an optional extra: ``pip install -e '.[eval]'``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..checked_files import content_digest
from ..compat import lm_eval as lm_eval_compat
from ..errors import UserError

__all__ = ["BUNDLED_TASKS_DIR", "TASK_METRICS", "bundled_tasks", "check_task_code", "evaluate_tasks",
           "find_task_code", "require_lm_eval", "task_metric_names"]

BUNDLED_TASKS_DIR = Path(__file__).resolve().parent.parent / "bundled" / "tasks"
TASK_METRICS = ("acc", "acc_norm")
"""The metrics kept per task (with their ``_stderr``), where the task reports them."""
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def require_lm_eval() -> None:
    """Raise a :class:`~romer_aihwkit.errors.UserError` naming the extra when lm-eval is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "downstream tasks need lm-evaluation-harness, an optional extra: pip install -e '.[eval]' "
            f"(import failed: {exc})"
        ) from None


_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
"""``dataset_path`` values that are Hugging Face ``datasets`` builders of local files."""


def _read_task_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    """A task YAML as a dict, its ``include:`` (a YAML next to it) merged under it; ``{}`` if unreadable."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    include = data.get("include")
    if isinstance(include, str) and depth < 4:
        data = {**_read_task_yaml(path.parent / include, depth + 1), **data}
    return data


def _data_is_local(data: dict[str, Any], folder: Path) -> bool:
    """Whether a task reads its documents without the hub: a ``custom_dataset`` loader, a local
    ``datasets`` builder (json, csv, ...) or a ``dataset_path`` that is a local folder."""
    if data.get("custom_dataset"):
        return True
    source = data.get("dataset_path")
    if not isinstance(source, str):
        return False
    if source in _LOCAL_BUILDERS:
        return True
    path = Path(source).expanduser()
    return (path if path.is_absolute() else folder / path).exists()


def _scan_tasks(folders: Sequence[Path]) -> tuple[set[str], set[str]]:
    """``(names, local)``: the task, tag and group names defined by the YAMLs under ``folders``, and
    those whose every task reads local data (without importing lm-eval)."""
    names: set[str] = set()
    local: set[str] = set()
    tags: dict[str, list[bool]] = {}
    groups: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            data = _read_task_yaml(path)
            task = data.get("task")
            if isinstance(data.get("group"), str) and isinstance(task, list):
                groups[data["group"]] = [t for t in task if isinstance(t, str)]
                continue
            if not isinstance(task, str):
                continue
            names.add(task)
            is_local = _data_is_local(data, path.parent)
            if is_local:
                local.add(task)
            tag = data.get("tag")
            for name in tag if isinstance(tag, list) else [tag]:
                if isinstance(name, str):
                    tags.setdefault(name, []).append(is_local)
    names.update(tags, groups)
    local.update(tag for tag, flags in tags.items() if all(flags))
    local.update(group for group, members in groups.items() if members and all(m in local for m in members))
    return names, local


def bundled_tasks() -> list[str]:
    """Names of the tasks shipped with the package (and their tags)."""
    return sorted(_scan_tasks([BUNDLED_TASKS_DIR])[0])


_FUNCTION_TAG = re.compile(r"^[^#]*!function\b")
_INCLUDE = re.compile(r"^include:\s*['\"]?([^'\"#\s]+)")


def find_task_code(folders: Sequence[str | os.PathLike]) -> list[tuple[Path, int]]:
    """``(file, line)`` of every ``!function`` tag in the task YAMLs under ``folders`` (and the YAMLs
    they ``include:``): the places where lm-eval would import and run Python code from the folder."""
    found: list[tuple[Path, int]] = []
    seen: set[Path] = set()

    def scan(path: Path, depth: int) -> None:
        real = path.resolve()
        if real in seen or depth > 4 or not real.is_file():
            return
        seen.add(real)
        try:
            lines = real.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return
        for number, line in enumerate(lines, 1):
            if _FUNCTION_TAG.match(line):
                found.append((path, number))
            include = _INCLUDE.match(line)
            if include:
                scan(path.parent / include.group(1), depth + 1)

    for folder in folders:
        for path in sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix in (".yaml", ".yml")):
            scan(path, 0)
    return found


def check_task_code(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None,
                    trust_task_code: bool = False) -> None:
    """Refuse ``include_path`` task folders whose YAMLs run Python code, unless ``trust_task_code``.

    lm-eval imports the Python file named by a ``!function`` tag (a ``process_docs``, a metric, a
    ``custom_dataset``) and runs it, so a task folder can run code like a model with
    ``trust_remote_code``. The bundled tasks are trusted (they ship with the package).

    Raises:
        UserError: Names the first file and line holding ``!function``.
    """
    if trust_task_code:
        return
    folders = _include_paths(include_path)[1:]
    code = find_task_code(folders)
    if code:
        path, line = code[0]
        more = f" (and {len(code) - 1} more)" if len(code) > 1 else ""
        raise UserError(
            f"task file {path} line {line}{more} uses `!function`: lm-eval would import and run Python code from "
            "the --include-path folder. Pass --trust-task-code (trust_task_code=True) if you trust that folder")


def _include_paths(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    paths = [BUNDLED_TASKS_DIR]
    extra = [] if include_path is None else (
        [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path))
    for p in extra:
        path = Path(p).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--include-path {p}: no such folder of lm-eval task YAMLs")
        paths.append(path.resolve())
    return paths


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Set ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` while local tasks run; restore them after."""
    if not enabled:
        yield
        return
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update({k: "1" for k in _OFFLINE_VARS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _task_manager(folders: tuple[str, ...], include_defaults: bool) -> Any:
    """One lm-eval ``TaskManager`` per set of folders *and their contents* (indexing lm-eval's own
    tasks takes seconds; a task folder edited between calls gets a fresh index)."""

    return _task_manager_for(folders, tuple(content_digest(f) for f in folders), include_defaults)


@functools.lru_cache(maxsize=4)
def _task_manager_for(folders: tuple[str, ...], contents: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders), include_defaults=include_defaults)


def task_metric_names(results: dict[str, dict[str, float]]) -> list[str]:
    """``"task/metric"`` names of a :func:`evaluate_tasks` result (metrics only, no stderr)."""
    return [f"{task}/{m}" for task, metrics in results.items() for m in TASK_METRICS if m in metrics]


def _parse_results(raw: dict[str, Any], leaf_tasks: set[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, metrics in raw.items():
        if task not in leaf_tasks:
            continue
        entry: dict[str, float] = {}
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if name in TASK_METRICS or name.removesuffix("_stderr") in TASK_METRICS:
                if isinstance(value, (int, float)):
                    entry.setdefault(name, float(value))
        if "acc" in entry or "acc_norm" in entry:
            if isinstance(metrics.get("sample_len"), int):
                entry["n"] = float(metrics["sample_len"])
            out[task] = entry
    return out


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str],
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    seed: int = 0,
    progress: bool = False,
    trust_task_code: bool = False,
) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks on ``model`` as it is in memory (e.g. one converted, programmed chip instance).

    Args:
        model: A Hugging Face causal LM (digital or converted by ``convert_to_analog_moe``).
        tokenizer: Its tokenizer.
        tasks: lm-eval task names (or tags), a list or one comma-separated string: the bundled
            ``shakespeare_line_end`` / ``shakespeare_speaker`` (tag ``shakespeare``), tasks of the
            ``include_path`` folders, or lm-eval's own tasks (these need the Hugging Face hub).
        include_path: Folder(s) of lm-eval task YAMLs, in addition to the bundled tasks.
        limit: Documents per task (lm-eval's ``limit``: the first N, or a fraction if < 1).
        num_fewshot: Few-shot examples (lm-eval's ``num_fewshot``; ``None``: the task's default).
        batch_size: Requests per forward pass.
        device: Where the model runs; default: the device of its first parameter.
        seed: Seed of lm-eval's own random draws (few-shot sampling).
        progress: Show lm-eval's progress bars.
        trust_task_code: Allow ``include_path`` task YAMLs that run Python code (``!function``); off,
            such a folder is refused naming the file (the bundled tasks are always trusted).

    Returns:
        ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}}`` for every task that
        reports accuracy (``acc_norm`` only where the task has it; ``n``: documents evaluated).

    Raises:
        UserError: lm-eval is not installed, a task name is unknown, or an ``include_path`` task
            runs Python code (``!function``) without ``trust_task_code``.
        FileNotFoundError: An ``include_path`` folder does not exist.
    """
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("give at least one task (--tasks T1,T2)")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    check_task_code(include_path, trust_task_code)
    require_lm_eval()
    folders = _include_paths(include_path)
    local = set(names) <= _scan_tasks(folders)[1]
    with _offline(local):
        import logging

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        manager = _task_manager(tuple(str(p) for p in folders), include_defaults=not local)
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            raise UserError(
                f"unknown lm-eval task(s) {', '.join(unknown)}; bundled: {', '.join(bundled_tasks())}; "
                "add task YAML folders with --include-path")
        if device is None:
            device = str(next(model.parameters()).device)
        was_training = model.training
        model.eval()
        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        try:
            with lm_eval_compat.quiet(not progress):
                raw = simple_evaluate(
                    model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                    # torch's generator is left alone: the caller seeds the per-forward output noise
                    random_seed=seed, numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=seed,
                    log_samples=False,
                )
        finally:
            model.train(was_training)
    results, leaves = lm_eval_compat.leaf_tasks(raw)
    return _parse_results(results, leaves)
