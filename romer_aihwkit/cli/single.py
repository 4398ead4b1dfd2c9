"""``convert`` and ``calibrate``: one chip instance, written to a folder."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from romer_aihwkit.errors import UserError

from .app import _stdout_console, app, handle_user_errors
from .options import (
    MAX_BLOCKS,
    MAX_SEQ_LEN,
    BatchOpt,
    CalibBlocksOpt,
    CalibTextOpt,
    JsonOpt,
    OutOpt,
    SeqLenOpt,
    TInfOpt,
    _check_at_most,
    _check_positive,
    _check_seed,
    _fmt_seconds,
    _load_model,
    _OSErrorsAsUserErrors,
    _parse_t,
    _split,
)


@app.command()
@handle_user_errors
def convert(
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME|FOLDER|HUB_ID",
                                       help="A bundled model name, a local folder or a hub id.")],
    device: Annotated[str, typer.Option("--device", "--device-config", "-d", metavar="NAME|YAML",
                                        help="Device config: preset or YAML file.")] = "pcm",
    analog_attention: Annotated[bool, typer.Option("--analog-attention",
                                                   help="Put attention projections on tiles too.")] = False,
    digital_router: Annotated[bool, typer.Option("--digital-router", help="Keep the routers digital.")] = False,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Program one chip instance with this seed (and drift it); saves its analog state.")] = None,
    t_inference: TInfOpt = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="DIR",
        help="Write convert.json, the digital weights (DIR/model) and, with --seed, DIR/analog_state.safetensors.")]
    = None,
    json_output: JsonOpt = False,
) -> None:
    """Convert a model's routers and experts to analog tiles and show what went where."""
    from pathlib import Path

    from romer_aihwkit.analog import analog_summary, convert_to_analog_moe, save_analog_state
    from romer_aihwkit.devices import load_device_config

    t = _parse_t(t_inference)
    if t is not None and seed is None:
        raise UserError("--t-inference needs --seed: drift applies to a programmed chip instance")
    if seed is not None:
        _check_seed(seed, "--seed")
    config = load_device_config(device)
    if seed is not None:
        config.check_t_inference(config.t_inference if t is None else t)
    digital, tokenizer = _load_model(model)
    amodel = convert_to_analog_moe(digital, config, analog_router=not digital_router,
                                   analog_attention=analog_attention, progress=not json_output)
    summary = analog_summary(amodel)
    info: dict[str, Any] = {"model": model, "device": config.name, "analog_router": not digital_router,
                            "analog_attention": analog_attention, "analog_summary": summary,
                            "moe_blocks": [{"name": n, "family": f} for n, f in amodel.analog_state.blocks],
                            "seed": seed, "t_inference": None, "files": []}
    if seed is not None:
        amodel.program_analog_weights(seed=seed, progress=not json_output)
        amodel.drift_analog_weights(t, progress=not json_output)
        info["t_inference"] = amodel.analog_state.t_inference
    if out is not None:
        from romer_aihwkit.atomic import atomic_write_text

        out_dir = Path(out).expanduser()
        with _OSErrorsAsUserErrors():
            out_dir.mkdir(parents=True, exist_ok=True)
            amodel.save_pretrained(out_dir / "model")
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir / "model")
            info["files"].append("model/")
            if seed is not None:
                save_analog_state(amodel, out_dir / "analog_state.safetensors")
                info["files"].append("analog_state.safetensors")
            info["files"].append("convert.json")
            atomic_write_text(out_dir / "convert.json", json.dumps(info, indent=2))
    if json_output:
        typer.echo(json.dumps(info, indent=2))
        return

    from rich import box
    from rich.table import Table

    console = _stdout_console()
    table = Table(title=f"Analog conversion of {model} on {config.name}", box=box.SIMPLE_HEAD,
                  title_justify="left", show_edge=False)
    table.add_column("role", style="bold")
    table.add_column("weight matrices", justify="right")
    for role, count in summary.items():
        table.add_row(role if role == "digital" else f"analog {role}", str(count))
    console.print(table)
    families = sorted({f for _, f in amodel.analog_state.blocks})
    console.print(f"{len(amodel.analog_state.blocks)} MoE blocks ({', '.join(families)}); "
                  f"routers {'digital' if digital_router else 'analog'}, attention "
                  f"{'analog' if analog_attention else 'digital'}.")
    if seed is not None:
        console.print(f"Programmed chip instance seed={seed}, drifted to t={_fmt_seconds(info['t_inference'])}.")
    if out is not None:
        console.print(f"Wrote {', '.join(info['files'])} to [bold]{out}[/bold]")


# --------------------------------------------------------------------------- calibrate
@app.command("calibrate")
@handle_user_errors
def calibrate_command(
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME|FOLDER|HUB_ID",
                                       help="A bundled model name, a local folder or a hub id.")],
    out: OutOpt,
    device: Annotated[str, typer.Option("--device", "--device-config", "-d", metavar="NAME|YAML",
                                        help="Device config: preset or YAML file.")] = "pcm",
    seed: Annotated[int, typer.Option("--seed", help="The chip instance (programming-noise seed).")] = 0,
    t_inference: TInfOpt = None,
    calib_text: CalibTextOpt = "bundled",
    seq_len: SeqLenOpt = 128,
    calib_blocks: CalibBlocksOpt = 16,
    batch_size: BatchOpt = 8,
    percentiles: Annotated[str, typer.Option("--percentiles", metavar="LOW,MID,HIGH",
                                             help="Percentiles matched between noisy and reference logits.")]
    = "5,50,95",
    tau: Annotated[float, typer.Option("--tau", help="Under-activated: noisy load < tau / E.")] = 0.25,
    replacement: Annotated[str, typer.Option("--replacement", metavar="average|split|none",
                                             help="How a hot expert uses its replica; 'none': no replacement.")]
    = "average",
    no_normalize: Annotated[bool, typer.Option("--no-normalize",
                                               help="Skip the percentile router normalization.")] = False,
    analog_attention: Annotated[bool, typer.Option("--analog-attention",
                                                   help="Put attention projections on tiles too.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Run ROMER on one chip instance and save the calibration (DIR/calibration.*, DIR/report.json)."""
    from pathlib import Path

    from romer_aihwkit.analog import convert_to_analog_moe
    from romer_aihwkit.atomic import atomic_write_text
    from romer_aihwkit.calibration import Romer, calibrate, save_calibration
    from romer_aihwkit.data import text_blocks
    from romer_aihwkit.devices import load_device_config

    _check_positive(seq_len=seq_len, calib_blocks=calib_blocks, batch_size=batch_size)
    _check_at_most(seq_len=(seq_len, MAX_SEQ_LEN), calib_blocks=(calib_blocks, MAX_BLOCKS),
                   batch_size=(batch_size, MAX_BLOCKS))
    _check_seed(seed, "--seed")
    try:
        pcts = tuple(float(p) for p in _split(percentiles))
    except ValueError:
        raise UserError(f"--percentiles must be three numbers like 5,50,95, got {percentiles!r}") from None
    if len(pcts) != 3:
        raise UserError(f"--percentiles must be three numbers like 5,50,95, got {percentiles!r}")
    try:
        romer = Romer(percentiles=pcts, tau=tau, replacement=replacement, normalize=not no_normalize)  # validates
    except ValueError as exc:
        raise UserError(f"invalid ROMER option: {exc} (--percentiles, --tau, --replacement, --no-normalize)") from None
    config = load_device_config(device)
    t = _parse_t(t_inference)
    config.check_t_inference(config.t_inference if t is None else t)
    out_dir = Path(out).expanduser()

    digital, tokenizer = _load_model(model)
    with _OSErrorsAsUserErrors():
        try:
            blocks = text_blocks(calib_text, tokenizer, seq_len=seq_len, split="validation", max_blocks=calib_blocks)
        except UserError as exc:
            raise UserError(f"--calib-text: {exc}") from None
    amodel = convert_to_analog_moe(digital, config, analog_attention=analog_attention, progress=not json_output)
    amodel.program_analog_weights(seed=seed, progress=not json_output)
    amodel.drift_analog_weights(t, progress=not json_output)
    report = calibrate(amodel, blocks, [romer], batch_size=batch_size, progress=not json_output)
    with _OSErrorsAsUserErrors():
        tensor_path, meta_path = save_calibration(amodel, out_dir / "calibration")
        data = {
            "model": model, "device": config.name, "seed": seed,
            "t_inference": amodel.analog_state.t_inference, "analog_attention": analog_attention,
            "calib_text": calib_text, "seq_len": seq_len, "calib_blocks": int(blocks.shape[0]),
            "files": [tensor_path.name, meta_path.name, "report.json"],
            "calibration": report.to_dict(),
        }
        atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2, default=str))
    if json_output:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    _print_calibration(data, out_dir)


def _print_calibration(data: dict[str, Any], out_dir: Any) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = _stdout_console()
    for name, cb in data["calibration"]["callbacks"].items():
        table = Table(title=(f"{name} on {escape(data['model'])} · {data['device']} · seed {data['seed']} · "
                             f"t {_fmt_seconds(data['t_inference'])} · {data['calibration']['tokens']} tokens"),
                      box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
        for header in ("layer", "block", "replaced", "load_cv", "max_load", "fidelity"):
            table.add_column(header, justify="left" if header in ("block", "replaced") else "right",
                             no_wrap=header != "replaced", overflow="fold", min_width=8 if header == "replaced" else None)
        for layer in cb.get("layers", []):
            pairs = ", ".join(f"{p['cold']}→{p['hot']}" for p in layer.get("replaced", [])) or "–"
            b, a = layer["before"], layer["after"]
            table.add_row(str(layer["layer"]), escape(layer["name"]), pairs,
                          *(f"{b[k]:.3f}→{a[k]:.3f}" for k in ("load_cv", "max_load_ratio", "router_fidelity")))
        s = cb.get("summary", {})
        if s:
            table.add_row("mean", "", str(cb.get('replaced_experts', 0)),
                          *(f"{s[k]['before']:.3f}→{s[k]['after']:.3f}"
                            for k in ("load_cv", "max_load_ratio", "router_fidelity")), style="bold")
        console.print(table)
    console.print("before → after calibration, on the calibration set; lower load_cv / max_load (ratio) and "
                  "higher (router) fidelity are better. replaced cold→hot: the cold expert's tile now holds a "
                  "replica of the hot expert.")
    console.print(f"Wrote {', '.join(data['files'])} to [bold]{out_dir}[/bold]")

# --------------------------------------------------------------------------- entry point
# --------------------------------------------------------------------------- diagnose
