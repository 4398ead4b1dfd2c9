"""Project exception types.

Errors caused by what the user passed (a bad file, an unknown name, an invalid setting, a saved
artifact that belongs to something else) derive from :class:`UserError`. The command line turns
them into one red line on stderr and exit code 2 (see :func:`romer_aihwkit.cli.handle_user_errors`);
anything else is a bug and keeps its traceback. Every subclass here is also a ``ValueError``, so
code that caught ``ValueError`` before keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ArtifactError",
    "DeviceConfigError",
    "EngineError",
    "FingerprintMismatchError",
    "InputError",
    "LibraryChangedError",
    "ResultsFolderError",
    "UnsafeFileError",
    "UserError",
]


class UserError(Exception):
    """An error in the user's input; its message says what is wrong and how to fix it."""


class InputError(UserError, ValueError):
    """An invalid option value, argument, text source or token batch (the message names it)."""


class DeviceConfigError(UserError, ValueError):
    """An invalid device configuration (unknown field, wrong type, value out of range).

    Args:
        message: What is wrong with the field.
        field: Name of the offending field, if one field is to blame.
        path: The YAML file (or other origin) the configuration came from, if any.
    """

    def __init__(self, message: str, *, field: str | None = None, path: str | Path | None = None):
        self.message = message
        self.field = field
        self.path = str(path) if path is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"device config {self.path}: " if self.path else "device config: "
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}{what}{self.message}"

    def with_path(self, path: str | Path) -> DeviceConfigError:
        """Return the same error attributed to ``path`` (the file it was read from)."""
        return DeviceConfigError(self.message, field=self.field, path=path)


class EngineError(UserError, ValueError):
    """A simulation engine that cannot run the requested setting here (e.g. ``engine="aihwkit"`` for a
    forward non-ideality only AIHWKit's C++ tiles simulate, where they do not import); the message
    names the setting and how to get an environment that runs it."""


class LibraryChangedError(UserError, ValueError):
    """A third-party library (transformers, lm-eval) no longer has an internal this package relies on.

    Raised by :mod:`romer_aihwkit.compat` instead of silently skipping what the internal did; the
    message names the library's version, the internal and the versions the package supports.
    """


class ArtifactError(UserError, ValueError):
    """A saved file (calibration, chip state, results, settings) that is missing a part, truncated,
    corrupted or of another format. The message starts with the file's path.

    Args:
        path: The file.
        message: What is wrong with it.
    """

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class FingerprintMismatchError(ArtifactError):
    """A saved artifact belongs to another model, device config or chip instance.

    Args:
        path: The artifact file.
        differences: ``(field, saved value, current value)`` for every differing field.
    """

    def __init__(self, path: str | Path, differences: Iterable[tuple[str, object, object]]):
        self.differences = list(differences)
        parts = "; ".join(f"{name}: saved {_short(saved)}, now {_short(now)}" for name, saved, now in self.differences)
        super().__init__(path, f"belongs to a different model or chip instance ({parts}); it was not loaded")


class ResultsFolderError(UserError, ValueError):
    """A results folder (``--out``) that cannot be used as asked: locked by another run, holding
    results of other inputs, or damaged. The message names the folder or file and the way out."""


class UnsafeFileError(UserError, ValueError):
    """A file this package refuses to load because loading it could run code (a pickle)."""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
