"""The ``romer-aihwkit`` command line (a package: one module per group of commands).

Conventions every command follows (so the CLI stays consistent as commands are added):

* Decorate each command with :func:`handle_user_errors`: user errors (the package's
  :class:`~romer_aihwkit.errors.UserError` family and ``FileNotFoundError``) become one red
  ``Error: ...`` line on stderr and exit code 2, without a traceback. Any other exception, a bare
  ``ValueError`` included, is a bug and keeps its traceback.
* Options shared by several commands are declared once, in :mod:`romer_aihwkit.cli.options`.
* Heavy imports (torch, transformers, aihwkit) go inside the command functions so that
  ``romer-aihwkit --help`` stays fast.
* Machine-readable output behind ``--json`` (on stdout, nothing else printed there); tables and
  progress for humans through ``rich``.

Modules: :mod:`.app` (the Typer app, error handling), :mod:`.options`, :mod:`.devices`,
:mod:`.compare` (compare, evaluate, methods, demo), :mod:`.single` (convert, calibrate),
:mod:`.diagnose`.
"""

from __future__ import annotations

import sys

from . import compare, devices, diagnose, single  # noqa: F401 - registers the commands on the app
from .app import EXIT_USER_ERROR, USER_ERRORS, app, handle_user_errors, is_user_error, report_user_error
from .compare import DEMO_METHODS

__all__ = ["DEMO_METHODS", "EXIT_USER_ERROR", "USER_ERRORS", "app", "handle_user_errors", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``romer-aihwkit``).

    Also a last line of defence: a user error escaping a command that forgot
    :func:`handle_user_errors` is still reported as one line with exit code 2.
    """
    try:
        app(args=argv, prog_name="romer-aihwkit")
    except Exception as exc:  # pragma: no cover - commands handle their own
        if not is_user_error(exc):
            raise
        report_user_error(exc)
        sys.exit(EXIT_USER_ERROR)
