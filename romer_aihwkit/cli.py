"""The ``romer-aihwkit`` command line.

Conventions every command follows (so the CLI stays consistent as commands are added):

* Decorate each command with :func:`handle_user_errors`: user errors (:data:`USER_ERRORS`:
  :class:`~romer_aihwkit.errors.UserError`, :class:`~romer_aihwkit.errors.DeviceConfigError`,
  ``ValueError``, ``FileNotFoundError``) become one red ``Error: ...`` line on stderr and exit
  code 2, without a traceback. Any other exception is a bug and keeps its traceback.
* Heavy imports (torch, transformers, aihwkit) go inside the command functions so that
  ``romer-aihwkit --help`` stays fast.
* Machine-readable output behind ``--json`` (on stdout, nothing else printed there); tables and
  progress for humans through ``rich``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from romer_aihwkit.errors import DeviceConfigError, UserError

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "app", "handle_user_errors", "main"]

EXIT_USER_ERROR = 2
"""Exit code for a user error (same as click's usage errors)."""

USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    DeviceConfigError,
    ValueError,
    FileNotFoundError,
)
"""Exception types reported as a one-line error instead of a traceback."""

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="romer-aihwkit",
    help="Simulate Hugging Face MoE LLMs on AIHWKit analog tiles and run ROMER calibration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


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
        except USER_ERRORS as exc:
            report_user_error(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- devices
devices_app = typer.Typer(
    help="List the device-config presets, or show one config (preset or YAML file).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(devices_app, name="devices")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@devices_app.callback()
@handle_user_errors
def devices(
    ctx: typer.Context,
    json_output: JsonOpt = False,
    show: Annotated[
        str | None,
        typer.Option("--show", metavar="NAME_OR_PATH", help="Show one config (same as `show`)."),
    ] = None,
) -> None:
    """List the device-config presets (name, noise model, periphery, tile, t_inference, source)."""
    if ctx.invoked_subcommand is not None:
        return
    if show is not None:
        _show_device(show, json_output)
        return
    from romer_aihwkit.devices import list_device_configs, load_device_config

    configs = [load_device_config(name) for name in list_device_configs()]
    if json_output:
        typer.echo(json.dumps([c.to_dict() for c in configs], indent=2))
        return

    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = _stdout_console()
    wide = console.width >= 140  # otherwise sources go below the table, so nothing is cut off
    table = Table(title="Device configs", box=box.SIMPLE_HEAD, title_justify="left",
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for header, justify in (("name", "left"), ("noise model", "left"), ("drift", "left"),
                            ("DAC/ADC", "center"), ("out_noise", "right"), ("tile", "center"),
                            ("t_inf", "right")):
        table.add_column(header, no_wrap=True, justify=justify)  # type: ignore[arg-type]
    if wide:
        table.add_column("source", overflow="fold")
    table.columns[0].style = "bold"
    for c in configs:
        noise = c.noise_model + (f" {c.noise_level:g}" if c.noise_level is not None else "")
        bits = f"{c.dac_bits or '-'}/{c.adc_bits or '-'}"
        tile = (f"{c.max_input_size or 'any'}x{c.max_output_size or 'any'}"
                if c.max_input_size or c.max_output_size else "any")
        row = [c.name, noise, c.drift_compensation, bits, f"{c.out_noise:g}", tile,
               _fmt_seconds(c.t_inference)]
        table.add_row(*row, *([c.source] if wide else []))
    console.print(table)
    console.print("drift: drift compensation; DAC/ADC: bits; tile: max rows x cols; t_inf: "
                  "default t_inference. Details: romer-aihwkit devices show NAME")
    if not wide:
        console.print("[bold]Sources[/bold]")
        for c in configs:
            console.print(f"  [bold]{c.name}[/bold]: {escape(c.source)}")


@devices_app.command("show")
@handle_user_errors
def devices_show(
    name_or_path: Annotated[str, typer.Argument(help="Preset name or path to a YAML file.")],
    json_output: JsonOpt = False,
) -> None:
    """Show one device config: resolved fields and what it does / does not model."""
    _show_device(name_or_path, json_output)


def _show_device(name_or_path: str, json_output: bool) -> None:
    from romer_aihwkit.devices import load_device_config

    cfg = load_device_config(name_or_path)
    modelled = cfg.modelled_nonidealities()
    unmodelled = cfg.unmodelled_nonidealities()
    if json_output:
        out = {"config": cfg.to_dict(), "modelled": modelled, "not_modelled": unmodelled}
        typer.echo(json.dumps(out, indent=2))
        return

    from rich.markup import escape
    from rich.table import Table

    console = _stdout_console()
    table = Table(title=f"Device config {cfg.name}", show_header=True)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value")
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, escape("null" if value is None else str(value)))
    console.print(table)
    console.print("[bold]Modelled:[/bold]")
    for item in modelled or ["nothing (ideal)"]:
        console.print(f"  + {escape(item)}")
    console.print("[bold]Not modelled:[/bold]")
    for item in unmodelled:
        console.print(f"  - {escape(item)}")


def _fmt_seconds(t: float) -> str:
    """Compact duration: 3600 -> '1 h', 86400 -> '1 d', 5 -> '5 s'."""
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size and (t / size).is_integer():
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


# --------------------------------------------------------------------------- other commands
# Room for `convert`, `calibrate`, `evaluate`, `compare` and `demo` (added by their owners).
# Each is an `@app.command(...)` decorated with `@handle_user_errors`, imports torch /
# transformers / aihwkit inside the function, takes `--device-config NAME_OR_PATH` resolved with
# `romer_aihwkit.devices.load_device_config`, and offers `--json` for machine output.


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``romer-aihwkit``).

    Also a last line of defence: a user error escaping a command that forgot
    :func:`handle_user_errors` is still reported as one line with exit code 2.
    """
    try:
        app(args=argv, prog_name="romer-aihwkit")
    except USER_ERRORS as exc:  # pragma: no cover - commands handle their own
        report_user_error(exc)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
