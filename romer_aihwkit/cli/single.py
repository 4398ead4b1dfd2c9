"""``convert`` and ``calibrate``: one chip instance, written to a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from romer_aihwkit.atomic import atomic_write_text
from romer_aihwkit.errors import UserError
from romer_aihwkit.outputs import check_output_folder, output_folder

from .app import _stdout_console, app, handle_user_errors
from .options import (
    MAX_BLOCKS,
    MAX_SEQ_LEN,
    BatchOpt,
    CalibBlocksOpt,
    CalibTextOpt,
    ForceOpt,
    JsonOpt,
    MaxTextSizeOpt,
    OutOpt,
    SeqLenOpt,
    TInfOpt,
    _check_at_most,
    _check_positive,
    _check_seed,
    _fewer_blocks,
    _fmt_seconds,
    _load_model,
    _OSErrorsAsUserErrors,
    _parse_size,
    _parse_t,
    _split,
    _warn,
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
    force: ForceOpt = False,
) -> None:
    """Convert a model's routers and experts to analog tiles and show what went where."""
    from romer_aihwkit.analog import analog_summary, convert_to_analog_moe, save_analog_state  # lazy: CLI start-up
    from romer_aihwkit.devices import load_device_config  # lazy: CLI start-up

    if out is not None:
        check_output_folder(out, "convert", force)  # before the model loads; checked again under the lock
    t = _parse_t(t_inference)
    if t is not None and seed is None:
        raise UserError("--t-inference needs --seed: drift applies to a programmed chip instance")
    if seed is not None:
        _check_seed(seed, "--seed")
    config = load_device_config(device)
    if seed is not None:
        config.check_t_inference(config.t_inference if t is None else t)
    digital, tokenizer = _load_model(model, require_tokenizer=False)
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
        with output_folder(out, "convert", force) as out_dir, _OSErrorsAsUserErrors():
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
    from rich.markup import escape
    from rich.table import Table

    console = _stdout_console()
    table = Table(title=f"Analog conversion of {escape(model)} on {escape(config.name)}", box=box.SIMPLE_HEAD,
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
        console.print(f"Wrote {escape(', '.join(info['files']))} to [bold]{escape(out)}[/bold]")


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
    max_masked_share: Annotated[str, typer.Option(
        "--max-masked-share", metavar="SHARE|none",
        help="Replacement budget: the largest share of a layer's experts that may be masked ('none': no cap).")]
    = "default",
    analog_attention: Annotated[bool, typer.Option("--analog-attention",
                                                   help="Put attention projections on tiles too.")] = False,
    json_output: JsonOpt = False,
    force: ForceOpt = False,
    max_text_size: MaxTextSizeOpt = None,
) -> None:
    """Run ROMER on one chip instance and save the calibration (DIR/calibration.*, DIR/report.json)."""
    from romer_aihwkit.calibration import Romer  # lazy: CLI start-up
    from romer_aihwkit.devices import load_device_config  # lazy: CLI start-up

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
    from romer_aihwkit.calibration.romer import DEFAULT_MAX_MASKED_SHARE  # lazy: CLI start-up

    cap: float | None = DEFAULT_MAX_MASKED_SHARE
    if max_masked_share.strip().lower() in ("none", "off"):
        cap = None
    elif max_masked_share != "default":
        try:
            cap = float(max_masked_share)
        except ValueError:
            raise UserError(f"--max-masked-share must be a share in [0, 1] or 'none', got {max_masked_share!r}") from None
    try:
        romer = Romer(percentiles=pcts, tau=tau, replacement=replacement, normalize=not no_normalize,
                      max_masked_share=cap)  # validates
    except ValueError as exc:
        raise UserError(f"invalid ROMER option: {exc} (--percentiles, --tau, --replacement, --no-normalize, "
                        "--max-masked-share)") from None
    config = load_device_config(device)
    t = _parse_t(t_inference)
    config.check_t_inference(config.t_inference if t is None else t)
    text_limit = _parse_size(max_text_size)
    with output_folder(out, "calibrate", force) as out_dir:
        _calibrate_into(out_dir, model=model, config=config, seed=seed, t=t, calib_text=calib_text, seq_len=seq_len,
                        calib_blocks=calib_blocks, batch_size=batch_size, romer=romer,
                        analog_attention=analog_attention, json_output=json_output, text_limit=text_limit)


def _calibrate_into(out_dir: Path, *, model: str, config: Any, seed: int, t: float | None, calib_text: str,
                    seq_len: int, calib_blocks: int, batch_size: int, romer: Any, analog_attention: bool,
                    json_output: bool, text_limit: int | None = None) -> None:
    from romer_aihwkit.analog import convert_to_analog_moe  # lazy: CLI start-up
    from romer_aihwkit.calibration import calibrate, save_calibration  # lazy: CLI start-up
    from romer_aihwkit.data import text_blocks, text_size_limit  # lazy: CLI start-up

    digital, tokenizer = _load_model(model)
    with _OSErrorsAsUserErrors(), text_size_limit(text_limit):
        try:
            blocks = text_blocks(calib_text, tokenizer, seq_len=seq_len, split="validation", max_blocks=calib_blocks)
        except UserError as exc:
            raise UserError(f"--calib-text: {exc}") from None
    short = _fewer_blocks("--calib-blocks", calib_blocks, int(blocks.shape[0]), seq_len)
    if short:
        _warn(short)
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
        if short:
            data["warnings"] = [short]
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
        table = Table(title=(f"{escape(name)} on {escape(data['model'])} · {escape(data['device'])} · seed {data['seed']} · "
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
    console.print(f"Wrote {escape(', '.join(data['files']))} to [bold]{escape(str(out_dir))}[/bold]")

# --------------------------------------------------------------------------- entry point
# --------------------------------------------------------------------------- diagnose
