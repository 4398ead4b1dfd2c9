"""``diagnose``: the error budget of a model on a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from romer_aihwkit.errors import UserError
from romer_aihwkit.outputs import output_folder

from .app import _stderr_console, _stdout_console, app, handle_user_errors
from .options import (
    MAX_BLOCKS,
    MAX_SEQ_LEN,
    BatchOpt,
    CalibBlocksOpt,
    EvalBlocksOpt,
    EvalTextOpt,
    FirstSeedOpt,
    ForceOpt,
    JsonOpt,
    MaxTextSizeOpt,
    OutOpt,
    SeedsOpt,
    SeqLenOpt,
    StressOpt,
    TInfOpt,
    _check_at_most,
    _check_positive,
    _check_seed,
    _fewer_blocks,
    _load_model,
    _OSErrorsAsUserErrors,
    _parse_size,
    _parse_t,
    _same_file,
    _warn,
)


@app.command()
@handle_user_errors
def diagnose(
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME|FOLDER|HUB_ID",
                                       help="A bundled model name, a local folder or a hub id.")],
    out: OutOpt,
    device: Annotated[str, typer.Option("--device", "--device-config", "-d", metavar="NAME|YAML",
                                        help="Device config: preset or YAML file.")] = "pcm",
    seeds: SeedsOpt = 3,
    first_seed: FirstSeedOpt = 0,
    t_inference: TInfOpt = None,
    eval_text: EvalTextOpt = "bundled",
    calib_text: Annotated[str | None, typer.Option(
        "--calib-text", metavar="bundled|FILE|FOLDER",
        help="Text for the per-layer statistics (default: the evaluation blocks).")] = None,
    seq_len: SeqLenOpt = 128,
    eval_blocks: EvalBlocksOpt = 16,
    calib_blocks: CalibBlocksOpt = 16,
    batch_size: BatchOpt = 8,
    analog_attention: Annotated[bool, typer.Option("--analog-attention",
                                                   help="Put attention on tiles too (adds that component).")] = False,
    stress: StressOpt = None,
    json_output: JsonOpt = False,
    force: ForceOpt = False,
    max_text_size: MaxTextSizeOpt = None,
) -> None:
    """Where the analog error comes from: an error budget by component x non-ideality, per-layer statistics.

    Writes DIR/diagnosis.json, DIR/report.md (with a ranked reading), DIR/layers_heatmap.png and DIR/budget.png;
    DIR/rows.jsonl holds each configuration x chip instance as it finishes, so a rerun resumes.
    """
    from romer_aihwkit.experiments.runner import MAX_SEEDS  # lazy: CLI start-up

    _check_positive(seeds=seeds, seq_len=seq_len, eval_blocks=eval_blocks, calib_blocks=calib_blocks,
                    batch_size=batch_size)
    _check_at_most(seeds=(seeds, MAX_SEEDS), seq_len=(seq_len, MAX_SEQ_LEN), eval_blocks=(eval_blocks, MAX_BLOCKS),
                   calib_blocks=(calib_blocks, MAX_BLOCKS), batch_size=(batch_size, MAX_BLOCKS))
    _check_seed(first_seed, "--first-seed", last=first_seed + seeds - 1)
    from romer_aihwkit.stress import parse_stress_spec  # lazy: CLI start-up

    parse_stress_spec(stress)  # a bad spec fails before the model loads
    text_limit = _parse_size(max_text_size)
    from romer_aihwkit.evaluation.distributed import process_context  # lazy: CLI start-up

    with output_folder(out, "diagnose", force, lock=process_context().is_main) as out_dir:
        _diagnose_into(out_dir, model=model, device=device, seeds=seeds, first_seed=first_seed,
                       t_inference=t_inference, eval_text=eval_text, calib_text=calib_text, seq_len=seq_len,
                       eval_blocks=eval_blocks, calib_blocks=calib_blocks, batch_size=batch_size,
                       analog_attention=analog_attention, stress=stress, json_output=json_output,
                       text_limit=text_limit)


def _diagnose_into(out_dir: Path, *, model: str, device: str, seeds: int, first_seed: int, t_inference: str | None,
                   eval_text: str, calib_text: str | None, seq_len: int, eval_blocks: int, calib_blocks: int,
                   batch_size: int, analog_attention: bool, stress: str | None, json_output: bool,
                   text_limit: int | None = None) -> None:
    from rich.markup import escape

    from romer_aihwkit.data import text_blocks, text_size_limit  # lazy: CLI start-up
    from romer_aihwkit.evaluation.diagnosis_report import DIAGNOSIS_FILES  # lazy: CLI start-up
    from romer_aihwkit.evaluation.distributed import process_context  # lazy: CLI start-up
    from romer_aihwkit.experiments.diagnose import diagnose as run_diagnosis  # lazy: CLI start-up

    digital, tokenizer = _load_model(model)
    notes: list[str] = []
    with _OSErrorsAsUserErrors(), text_size_limit(text_limit):
        try:
            blocks = text_blocks(eval_text, tokenizer, seq_len=seq_len, split="test", max_blocks=eval_blocks)
        except UserError as exc:
            raise UserError(f"--eval-text: {exc}") from None
        calib = None
        if calib_text is not None:
            overlap = _same_file(eval_text, calib_text)
            if overlap:
                notes.append(f"--calib-text and --eval-text are {overlap} ({eval_text}, {calib_text}): the per-layer "
                             "statistics come from the evaluation text")
            try:
                calib = text_blocks(calib_text, tokenizer, seq_len=seq_len, split="validation", max_blocks=calib_blocks)
            except UserError as exc:
                raise UserError(f"--calib-text: {exc}") from None
    notes += [w for w in (_fewer_blocks("--eval-blocks", eval_blocks, int(blocks.shape[0]), seq_len),
                          None if calib is None else
                          _fewer_blocks("--calib-blocks", calib_blocks, int(calib.shape[0]), seq_len)) if w]
    for note in notes:
        _warn(note)
    about: dict[str, Any] = {"model": model, "eval_text": eval_text, "calib_text": calib_text, "seq_len": seq_len,
                             "eval_blocks": int(blocks.shape[0]), "batch_size": batch_size}
    if calib is not None:
        about["calib_blocks"] = int(calib.shape[0])
    if notes:
        about["warnings"] = notes
    with _OSErrorsAsUserErrors():
        result = run_diagnosis(digital, device, blocks, seeds=list(range(first_seed, first_seed + seeds)),
                               calib_batches=calib, t_inference=_parse_t(t_inference),
                               analog_attention=analog_attention, stress=stress, batch_size=batch_size,
                               progress=not json_output, out_dir=out_dir, about=about)
    if not process_context().is_main:
        return  # rank 0 writes and prints the merged diagnosis
    files = [out_dir / name for name in DIAGNOSIS_FILES]
    if json_output:
        data = result.to_dict()
        typer.echo(json.dumps({k: data[k] for k in ("settings", "digital_ppl", "budget", "reading")}, indent=2))
        return
    console = _stdout_console()
    for i, line in enumerate(result.reading, 1):
        console.print(f"{i}. {line}", markup=False)
    _stderr_console().print(f"Wrote {escape(', '.join(f.name for f in files))} to [bold]{escape(str(out_dir))}[/bold]")
