"""Project exception types.

Errors caused by what the user passed (a bad file, an unknown name, an invalid setting) derive from
:class:`UserError`. The command line turns them into one red line on stderr and exit code 2 (see
:func:`romer_aihwkit.cli.handle_user_errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DeviceConfigError", "UserError"]


class UserError(Exception):
    """An error in the user's input; its message says what is wrong and how to fix it."""


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
