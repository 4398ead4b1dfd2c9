"""``romer-aihwkit devices``: list the device presets, show one config with its ranges and deviations."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .app import _stdout_console, app, handle_user_errors
from .options import JsonOpt, _fmt_seconds

devices_app = typer.Typer(
    help="List the device-config presets, or show one config (preset or YAML file).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(devices_app, name="devices")



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
    from romer_aihwkit.devices import list_device_configs, load_device_config  # lazy: CLI start-up

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
        table.add_row(*(escape(cell) for cell in row), *([escape(c.source)] if wide else []))
    console.print(table)
    console.print("drift: drift compensation; DAC/ADC: bits; tile: max rows x cols; t_inf: "
                  "default t_inference. Details: romer-aihwkit devices show NAME")
    if not wide:
        console.print("[bold]Sources[/bold]")
        for c in configs:
            console.print(f"  [bold]{escape(c.name)}[/bold]: {escape(c.source)}")


@devices_app.command("show")
@handle_user_errors
def devices_show(
    name_or_path: Annotated[str, typer.Argument(help="Preset name or path to a YAML file.")],
    json_output: JsonOpt = False,
) -> None:
    """Show one device config: resolved fields and what it does / does not model."""
    _show_device(name_or_path, json_output)


def _show_device(name_or_path: str, json_output: bool) -> None:
    from romer_aihwkit.devices import FIELD_RANGES, load_device_config  # lazy: CLI start-up

    cfg = load_device_config(name_or_path)
    modelled = cfg.modelled_nonidealities()
    unmodelled = cfg.unmodelled_nonidealities()
    deviations = cfg.aihwkit_deviations()
    ranges = {k: {"min": lo, "max": hi, "unit": unit} for k, (lo, hi, unit) in FIELD_RANGES.items()}
    if json_output:
        out = {"config": cfg.to_dict(), "modelled": modelled, "not_modelled": unmodelled,
               "aihwkit_deviations": deviations, "ranges": ranges}
        typer.echo(json.dumps(out, indent=2))
        return

    from rich.markup import escape
    from rich.table import Table

    console = _stdout_console()
    table = Table(title=f"Device config {escape(cfg.name)}", show_header=True)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value")
    table.add_column("valid range", style="dim")
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
            valid = "; ".join(_fmt_range(f"{key}.{k}") for k in cfg.to_dict()[key] if f"{key}.{k}" in FIELD_RANGES)
        else:
            valid = _fmt_range(key)
        table.add_row(key, escape("null" if value is None else str(value)), escape(valid))
    console.print(table)
    console.print("[bold]Modelled:[/bold]")
    for item in modelled or ["nothing (ideal)"]:
        console.print(f"  + {escape(item)}")
    console.print("[bold]Not modelled:[/bold]")
    for item in unmodelled:
        console.print(f"  - {escape(item)}")
    console.print("[bold]Deviations from AIHWKit's defaults:[/bold]")
    for item in deviations or ["none"]:
        console.print(f"  ! {escape(item)}")


def _fmt_range(key: str) -> str:
    from romer_aihwkit.devices import FIELD_CHOICES, FIELD_RANGES  # lazy: CLI start-up

    if key in FIELD_CHOICES:
        return " | ".join(FIELD_CHOICES[key])
    if key not in FIELD_RANGES:
        return ""
    lo, hi, unit = FIELD_RANGES[key]
    name = key.split(".")[-1] + ": " if "." in key else ""
    return f"{name}{lo:g} .. {hi:g} {unit}"


