"""Output folders (``--out``): one writer at a time, and only into a folder this package owns.

Every command that writes a folder (``compare``, ``evaluate``, ``demo``, ``diagnose``,
``calibrate``, ``convert`` and :func:`~romer_aihwkit.experiments.run_comparison`) goes through
:func:`output_folder`:

* an empty or blank ``--out`` is refused (it would write into the current folder);
* the folder's lock (:func:`results_folder_lock`, an OS file lock) is held while writing, so a second
  run on the same folder is refused at once;
* an ownership marker (:data:`MARKER_FILE`) records which kind of output the folder holds. A
  non-empty folder without the marker (someone else's files) or with another kind's marker (a
  diagnosis where a comparison would go) is refused before anything is written, unless ``force``;
  ``force`` then removes the other kind's known outputs (never files this package did not write);
* a lock or permission problem (a read-only folder) is one :class:`~romer_aihwkit.errors.ResultsFolderError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, default_file_mode
from .errors import ResultsFolderError

__all__ = [
    "KIND_OUTPUTS",
    "LOCK_FILE",
    "MARKER_FILE",
    "ResultsLockedError",
    "check_output_folder",
    "discard_outputs",
    "output_folder",
    "results_folder_lock",
]

LOCK_FILE = ".romer-aihwkit.lock"
"""The folder's lock file (kept after a run; an OS lock leaves nothing stale)."""
MARKER_FILE = ".romer-aihwkit-owner.json"
"""The ownership marker: ``{"written_by": "romer-aihwkit", "kind": KIND, "command": COMMAND}``."""

COMPARISON_PLOTS = ("expert_load", "ppl_by_method", "ppl_vs_drift", "recovery", "task_accuracy")
"""The plots of a comparison folder, ``{prefix}_{model}_{device}*.png`` (written by
:func:`romer_aihwkit.evaluation.plots.write_plots`; ``--force`` discards them by these prefixes)."""

KIND_OUTPUTS: dict[str, tuple[str, ...]] = {
    "comparison": ("rows*.jsonl", "settings.json", "results.json", "results.csv", "report.md",
                   *(f"{prefix}_*.png" for prefix in COMPARISON_PLOTS), "hwa"),
    "diagnosis": ("rows*.jsonl", "settings.json", "diagnosis.json", "report.md", "layers_heatmap.png", "budget.png"),
    "calibration": ("calibration.safetensors", "calibration.json", "report.json"),
    "conversion": ("model", "analog_state.safetensors", "convert.json"),
}
"""The files (glob patterns) each kind of output writes at the top of its folder."""

COMMAND_KIND = {"compare": "comparison", "evaluate": "comparison", "demo": "comparison",
                "run_comparison": "comparison", "diagnose": "diagnosis", "calibrate": "calibration",
                "convert": "conversion"}
"""The kind of output each writing command produces (commands of one kind share a folder)."""


class ResultsLockedError(ResultsFolderError):
    """Another run holds the output folder's lock."""


def _os_message(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, MARKER_FILE))


def check_output_folder(out: str | os.PathLike, command: str, force: bool = False,
                        option: str = "--out") -> Path:
    """Whether ``command`` may write ``out``; writes nothing.

    Args:
        out: The folder (need not exist).
        command: The writing command (a key of :data:`COMMAND_KIND`).
        force: Take over a folder of another kind or without the marker.
        option: How the folder was given, for messages.

    Returns:
        The folder as a ``Path`` (``~`` expanded).

    Raises:
        ResultsFolderError: An empty name, a path that is a file, an unreadable folder, or (unless
            ``force``) a non-empty folder without this package's marker or with another kind's.
    """
    kind = COMMAND_KIND[command]
    text = os.fspath(out)
    if not text.strip():
        raise ResultsFolderError(f"{option} is empty: give the folder to write into (e.g. {option} results)")
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ResultsFolderError(f"{option} {folder} exists and is not a folder")
    if not folder.is_dir():
        return folder
    try:
        entries = _entries(folder)
        marker = _read_marker(folder)
    except OSError as exc:
        raise ResultsFolderError(f"cannot read {option} {folder}: {_os_message(exc)}") from None
    if force or not entries:
        return folder
    if marker is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ResultsFolderError(
            f"{option} {folder} holds files romer-aihwkit did not write ({shown}); choose an empty or new folder, "
            f"or pass --force to write into it anyway")
    if marker.get("kind") != kind:
        owner = marker.get("command") or marker.get("kind") or "an unknown command"
        raise ResultsFolderError(
            f"{option} {folder} holds the output of `{owner}`, not of `{command}`; choose another folder, or pass "
            f"--force to replace that output")
    return folder


def discard_outputs(folder: Path, kind: str) -> list[str]:
    """Remove the known outputs of ``kind`` at the top of ``folder``; returns the names removed."""
    import shutil

    removed = []
    for path in sorted(folder.iterdir()):
        if any(fnmatch(path.name, pattern) for pattern in KIND_OUTPUTS[kind]):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


@contextmanager
def output_folder(out: str | os.PathLike, command: str, force: bool = False, option: str = "--out",
                  lock: bool = True) -> Iterator[Path]:
    """Check, create, lock and claim an output folder for ``command``; yields its ``Path``.

    The checks of :func:`check_output_folder` run before anything is written and again under the
    lock. With ``force``, a folder of another kind loses that kind's known outputs before the marker
    is rewritten. ``lock=False`` skips the lock (a process that is not rank 0 of a multi-process run).

    Raises:
        ResultsFolderError: See :func:`check_output_folder`; also a folder that cannot be created or
            written (permissions, read-only file system).
        ResultsLockedError: Another run holds the folder's lock.
    """
    kind = COMMAND_KIND[command]
    folder = check_output_folder(out, command, force, option)
    if not lock:
        yield folder
        return
    created = not folder.exists()
    lock_existed = (folder / LOCK_FILE).exists()
    wrote_marker = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsFolderError(f"cannot create {option} {folder}: {_os_message(exc)}") from None
    try:
        with results_folder_lock(folder, option):
            check_output_folder(folder, command, force, option)
            try:
                marker = _read_marker(folder)
                if force and marker and marker.get("kind") in KIND_OUTPUTS and marker.get("kind") != kind:
                    discard_outputs(folder, str(marker["kind"]))
                if marker is None or marker.get("kind") != kind:
                    atomic_write_text(folder / MARKER_FILE, json.dumps(
                        {"written_by": "romer-aihwkit", "kind": kind, "command": command}, indent=2) + "\n")
                    wrote_marker = True
            except OSError as exc:
                raise ResultsFolderError(f"cannot write to {option} {folder}: {_os_message(exc)}") from None
            yield folder
    except BaseException:
        _undo_claim(folder, created, wrote_marker, lock_existed)
        raise


def _undo_claim(folder: Path, created: bool, wrote_marker: bool, lock_existed: bool) -> None:
    """After a failed command, take back a claim that wrote nothing else: the folder, if this call
    created it, or the marker and lock file it added, so that a refused run leaves no trace."""
    try:
        if _entries(folder):
            return  # the command wrote something: keep the marker that says whose it is
        if wrote_marker:
            (folder / MARKER_FILE).unlink(missing_ok=True)
        if not lock_existed:
            (folder / LOCK_FILE).unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass


_LOCKS: dict[str, Any] = {}


def results_folder_lock(out_dir: str | os.PathLike, option: str = "--out") -> Any:
    """The folder's lock (re-entrant in this process); entering it refuses at once when another
    process holds it.

    Use as ``with results_folder_lock(out):``. The lock is an OS file lock (``filelock``), so a
    killed run leaves no stale lock.

    Raises:
        ResultsLockedError: Another run holds the lock (on entering).
        ResultsFolderError: The folder cannot be created or its lock file written (permissions).
    """
    from filelock import FileLock, Timeout

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsFolderError(f"cannot create {option} {out_dir}: {_os_message(exc)}") from None
    path = str((out_dir / LOCK_FILE).resolve())
    if path not in _LOCKS:
        _LOCKS[path] = FileLock(path, timeout=0, mode=default_file_mode(), thread_local=False)
    lock = _LOCKS[path]

    class _Held:
        def __enter__(self) -> Any:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise ResultsLockedError(
                    f"{out_dir} is in use by another romer-aihwkit run (lock {path}); wait for it to finish or "
                    f"choose another {option} folder") from None
            except OSError as exc:
                raise ResultsFolderError(
                    f"cannot lock {option} {out_dir}: {_os_message(exc)} (is the folder writable?)") from None
            return lock

        def __exit__(self, *exc: object) -> None:
            lock.release()

    return _Held()
