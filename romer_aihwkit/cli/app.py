"""The Typer application, user-error handling and consoles shared by every command.

Conventions every command follows (so the CLI stays consistent as commands are added):

* Decorate each command with :func:`handle_user_errors`: user errors (:data:`USER_ERRORS`:
  :class:`~romer_aihwkit.errors.UserError` and its subclasses, ``FileNotFoundError``, and the
  converter's ``NoMoEBlocksError``/``UnsupportedMoEError``) become one red ``Error: ...`` line on
  stderr and exit code 2, without a traceback. Any other exception, a bare ``ValueError``
  included, is a bug and keeps its traceback.
* Heavy imports (torch, transformers, aihwkit) go inside the command functions so that
  ``romer-aihwkit --help`` stays fast.
* Machine-readable output behind ``--json`` (on stdout, nothing else printed there); tables and
  progress for humans through ``rich``, on the consoles of this module (``emoji=False``), with every
  user-supplied string (names, paths, values) passed through ``rich.markup.escape`` so that
  ``[bold]`` or ``:x:`` in it prints literally.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from romer_aihwkit.errors import DeviceConfigError, UserError

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "app", "handle_user_errors", "is_user_error", "report_user_error"]

EXIT_USER_ERROR = 2
"""Exit code for a user error (same as click's usage errors)."""

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, DeviceConfigError, FileNotFoundError)
"""Exception types reported as a one-line error instead of a traceback (the converter's
``NoMoEBlocksError`` / ``UnsupportedMoEError`` / ``UnsupportedLayoutError`` are ``UserError`` s too)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one red line) rather than a bug (traceback)."""
    return isinstance(exc, USER_ERRORS)


F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="romer-aihwkit",
    help="Simulate Hugging Face MoE LLMs on AIHWKit analog tiles and run ROMER calibration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _stderr_console() -> Any:
    """Console for messages and progress. ``emoji=False``: ``:x:`` in a user's string stays ``:x:``;
    user-supplied text in markup strings goes through ``rich.markup.escape`` (``[bold]`` stays literal)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _stdout_console() -> Any:
    """Console for tables and summaries (no emoji codes, no highlighting; escape user text in markup)."""
    from rich.console import Console

    return Console(highlight=False, emoji=False)


def report_user_error(exc: BaseException) -> None:
    """Print ``exc`` as one red line on stderr."""
    from rich.markup import escape

    message = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}"
    message = " ".join(message.split()) or type(exc).__name__
    _stderr_console().print(f"[bold red]Error:[/bold red] [red]{escape(message)}[/red]")


def handle_user_errors(fn: F) -> F:
    """Decorator for commands: user errors -> one red stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            report_user_error(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
