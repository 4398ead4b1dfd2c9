"""``compare``, ``evaluate``, ``methods`` and ``demo``: Monte-Carlo comparisons over chip instances."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from romer_aihwkit.errors import UserError

if TYPE_CHECKING:
    from romer_aihwkit.evaluation.records import ComparisonResults, ResultRow

from romer_aihwkit.errors import ResultsFolderError
from romer_aihwkit.outputs import output_folder

from .app import _stderr_console, _stdout_console, app, handle_user_errors
from .options import (
    DEMO_METHODS,
    MAX_BLOCKS,
    MAX_SEQ_LEN,
    BatchOpt,
    CalibBlocksOpt,
    CalibTextOpt,
    ControlsOpt,
    EvalBlocksOpt,
    EvalTextOpt,
    FewshotOpt,
    FirstSeedOpt,
    ForceOpt,
    HwaStepsOpt,
    IncludePathOpt,
    JsonOpt,
    LimitOpt,
    MaxTextSizeOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    SeedsOpt,
    SeqLenOpt,
    StressOpt,
    TasksOpt,
    TInfListOpt,
    TrainTextOpt,
    TrustTaskCodeOpt,
    _check_at_most,
    _check_positive,
    _check_seed,
    _OSErrorsAsUserErrors,
    _parse_size,
    _parse_t_list,
    _same_file,
    _split,
    _warn,
    _with_tasks_and_hwa,
)


def _already_done(out_dir: Any, settings: Any, keys: set[tuple], resume: bool, force: bool = False) -> int:
    from romer_aihwkit.experiments.runner import finished_rows  # lazy: CLI start-up

    try:
        return len(finished_rows(out_dir, settings) & keys) if resume else 0
    except ResultsFolderError:
        if force:  # the run discards the damaged rows
            return 0
        raise


def _run_compare(settings: Any, out: str, resume: bool, force: bool, json_output: bool,
                 command: str = "compare", max_text_size: int | None = None) -> ComparisonResults:
    """Run the comparison with a progress bar, then write report.md and plots (rank 0), holding the
    output folder's lock throughout so that a second run on the same --out is refused; a folder of
    other files or of another command is refused unless --force (:func:`romer_aihwkit.outputs.output_folder`)."""
    from romer_aihwkit.evaluation.distributed import process_context  # lazy: CLI start-up
    from romer_aihwkit.experiments.settings import resolve  # lazy: CLI start-up

    with _OSErrorsAsUserErrors():
        resolved = resolve(settings)  # devices, drift times, lm-eval, inputs: once, before the folder is touched
    with output_folder(out, command, force, lock=process_context().rank == 0) as out_dir:
        return _run_compare_unlocked(resolved, str(out_dir), resume, force, json_output, max_text_size)


def _run_compare_unlocked(resolved: Any, out: str, resume: bool, force: bool, json_output: bool,
                          max_text_size: int | None = None) -> ComparisonResults:
    import warnings
    from pathlib import Path

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from romer_aihwkit.data import text_size_limit  # lazy: CLI start-up
    from romer_aihwkit.evaluation.plots import write_plots  # lazy: CLI start-up
    from romer_aihwkit.evaluation.report import print_summary, write_report  # lazy: CLI start-up
    from romer_aihwkit.experiments.runner import run_comparison  # lazy: CLI start-up

    out_dir = Path(out)
    settings = resolved.settings
    overlap = _same_file(settings.eval_text, settings.calib_text)
    if overlap:
        _warn(f"--calib-text and --eval-text are {overlap} ({settings.eval_text}, {settings.calib_text}): calibration "
              "and evaluation data overlap, so calibrated methods will look better than they are")
    from romer_aihwkit.evaluation.distributed import process_context  # lazy: CLI start-up
    from romer_aihwkit.experiments.runner import planned_rows  # lazy: CLI start-up

    ctx = process_context()
    rank, world_size = ctx.rank, ctx.world_size
    keys = set(planned_rows(resolved, rank, world_size))
    done = _already_done(out_dir, resolved, keys, resume, force)
    err = _stderr_console()
    if done and rank == 0:
        err.print(f"resuming: {done} of {len(keys)} rows already in {escape(str(out_dir))}")

    progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
                        disable=json_output and not err.is_terminal)
    with progress:
        label = f"rank {rank}: " if world_size > 1 else ""
        task = progress.add_task(f"{label}loading model and text, digital perplexity", total=len(keys), completed=done)

        def on_row(row: ResultRow) -> None:
            progress.update(task, advance=1, description=escape(
                f"{label}{row.method} seed {row.seed} t={row.t_inference:g}s ppl {row.ppl:.2f}"))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _OSErrorsAsUserErrors(), text_size_limit(max_text_size):
                results = run_comparison(resolved, out_dir, resume=resume, force=force, on_row=on_row)
        progress.update(task, description=f"{label}done")
    for w in caught:  # one plain line each (also recorded in results.json, settings.warnings)
        if not str(w.message).startswith("calibration and evaluation text are"):  # warned above
            _warn(str(w.message))

    if rank != 0:
        return results
    plots = write_plots(results, out_dir)
    report = write_report(results, out_dir, plots=plots)
    if json_output:
        typer.echo(json.dumps([e.to_dict() for e in results.summary], indent=2, default=str))
    else:
        print_summary(results, _stdout_console())
    files = ["results.json", "results.csv", report.name] + [p.name for p in plots]
    err.print(f"Wrote {escape(', '.join(files))} to [bold]{escape(str(out_dir))}[/bold]")
    return results


def _compare_settings(*, models: list[str], devices: list[str], methods: list[str], seeds: int, first_seed: int,
                      t_inference: list[str] | None, eval_text: str, calib_text: str, seq_len: int,
                      eval_blocks: int, calib_blocks: int, batch_size: int, stress: str | None = None,
                      controls: bool = True) -> Any:
    from romer_aihwkit.experiments.settings import MAX_SEEDS, CompareSettings  # lazy: CLI start-up

    _check_positive(seeds=seeds, seq_len=seq_len, eval_blocks=eval_blocks, calib_blocks=calib_blocks,
                    batch_size=batch_size)
    _check_at_most(seeds=(seeds, MAX_SEEDS), seq_len=(seq_len, MAX_SEQ_LEN), eval_blocks=(eval_blocks, MAX_BLOCKS),
                   calib_blocks=(calib_blocks, MAX_BLOCKS), batch_size=(batch_size, MAX_BLOCKS))
    _check_seed(first_seed, "--first-seed", last=first_seed + seeds - 1)
    if not models:
        raise UserError("give a model with --model (a bundled name, a local folder or a hub id)")
    if not methods:
        raise UserError("give at least one method with --methods")
    if not devices:
        raise UserError("give at least one device config with --devices")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {', '.join(methods)}")
    return CompareSettings(
        models=models, devices=devices, methods=methods,
        seeds=list(range(first_seed, first_seed + seeds)), t_inference=_parse_t_list(t_inference),
        eval_text=eval_text, calib_text=calib_text, seq_len=seq_len, eval_blocks=eval_blocks,
        calib_blocks=calib_blocks, batch_size=batch_size, stress=stress, controls=controls,
    )


# --------------------------------------------------------------------------- compare / evaluate
_COMPARE_HELP = (
    "Compare methods over simulated chip instances: results.json/.csv, report.md, PNG plots.\n\n"
    "Every method runs on the same chip instances (one per seed): program, drift to each --t-inference, "
    "calibrate on --calib-text when the method calibrates, evaluate perplexity and routing on --eval-text. "
    "Every method that edits the model (ROMER, hetero, router ensembles, HWA, ...) also runs on the noise-free "
    "`ideal` device with the same calibration data and seed: each row carries edit_ppl (that run minus the "
    "digital perplexity) and recovered (the share of `global`'s analog gap the method removes beyond its edit; "
    "`global` is added when missing); --no-controls turns this off. "
    "Finished rows are appended to DIR/rows.jsonl as they finish, so an interrupted run resumes where it "
    "stopped. Under `accelerate launch` / torchrun (WORLD_SIZE > 1) chip instances are sharded over "
    "processes and rank 0 writes the report."
)


@app.command(help=_COMPARE_HELP)
@handle_user_errors
def compare(
    model: ModelOpt,
    out: OutOpt,
    devices: Annotated[list[str], typer.Option(
        "--devices", "--device", "-d", metavar="NAME|YAML[,...]",
        help="Device configs: presets (see `romer-aihwkit devices`) or YAML files.")] = ["pcm"],  # noqa: B006
    methods: Annotated[list[str], typer.Option(
        "--methods", "--method", metavar="METHOD[,...]",
        help="Methods to compare (see `romer-aihwkit methods`).")] = ["none,global,hetero,romer"],  # noqa: B006
    seeds: SeedsOpt = 5,
    first_seed: FirstSeedOpt = 0,
    t_inference: TInfListOpt = None,
    eval_text: EvalTextOpt = "bundled",
    calib_text: CalibTextOpt = "bundled",
    seq_len: SeqLenOpt = 128,
    eval_blocks: EvalBlocksOpt = 32,
    calib_blocks: CalibBlocksOpt = 16,
    batch_size: BatchOpt = 8,
    resume: ResumeOpt = True,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    stress: StressOpt = None,
    tasks: TasksOpt = None,
    include_path: IncludePathOpt = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    train_text: TrainTextOpt = "bundled",
    hwa_steps: HwaStepsOpt = None,
    max_text_size: MaxTextSizeOpt = None,
    trust_task_code: TrustTaskCodeOpt = False,
    controls: ControlsOpt = True,
) -> None:
    """Compare methods over simulated chip instances: results.json/.csv, report.md, PNG plots."""
    settings = _compare_settings(models=_split(model), devices=_split(devices), methods=_split(methods), seeds=seeds,
                                 first_seed=first_seed, t_inference=t_inference, eval_text=eval_text,
                                 calib_text=calib_text, seq_len=seq_len, eval_blocks=eval_blocks,
                                 calib_blocks=calib_blocks, batch_size=batch_size, stress=stress, controls=controls)
    settings = _with_tasks_and_hwa(settings, tasks, include_path, limit, num_fewshot, train_text, hwa_steps,
                                   trust_task_code)
    _run_compare(settings, out, resume, force, json_output, "compare", _parse_size(max_text_size))


@app.command()
@handle_user_errors
def evaluate(
    model: ModelOpt,
    out: OutOpt,
    method: Annotated[str, typer.Option("--method", metavar="METHOD",
                                        help="One method (see `romer-aihwkit methods`).")] = "none",
    device: Annotated[str, typer.Option("--device", "--device-config", "-d", metavar="NAME|YAML",
                                        help="Device config: preset or YAML file.")] = "pcm",
    seeds: SeedsOpt = 5,
    first_seed: FirstSeedOpt = 0,
    t_inference: TInfListOpt = None,
    eval_text: EvalTextOpt = "bundled",
    calib_text: CalibTextOpt = "bundled",
    seq_len: SeqLenOpt = 128,
    eval_blocks: EvalBlocksOpt = 32,
    calib_blocks: CalibBlocksOpt = 16,
    batch_size: BatchOpt = 8,
    resume: ResumeOpt = True,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    tasks: TasksOpt = None,
    include_path: IncludePathOpt = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    train_text: TrainTextOpt = "bundled",
    hwa_steps: HwaStepsOpt = None,
    max_text_size: MaxTextSizeOpt = None,
    trust_task_code: TrustTaskCodeOpt = False,
    controls: ControlsOpt = True,
) -> None:
    """Evaluate one method over simulated chip instances (`compare` with a single method).

    A method that edits the model also runs on the noise-free `ideal` device, and `global` runs next
    to it for `recovered` (see `compare`); --no-controls evaluates the method alone.
    """
    methods = _split(method)
    if len(methods) != 1:
        raise UserError(f"evaluate takes one --method, got {method!r}; use `compare` for several")
    settings = _compare_settings(models=_split(model), devices=[device], methods=methods, seeds=seeds,
                                 first_seed=first_seed, t_inference=t_inference, eval_text=eval_text,
                                 calib_text=calib_text, seq_len=seq_len, eval_blocks=eval_blocks,
                                 calib_blocks=calib_blocks, batch_size=batch_size, controls=controls)
    settings = _with_tasks_and_hwa(settings, tasks, include_path, limit, num_fewshot, train_text, hwa_steps,
                                   trust_task_code)
    _run_compare(settings, out, resume, force, json_output, "evaluate", _parse_size(max_text_size))


@app.command("methods")
@handle_user_errors
def methods_command(json_output: JsonOpt = False) -> None:
    """List the comparison methods (baselines, ROMER and its ablations)."""
    from romer_aihwkit.experiments.methods import METHODS  # lazy: CLI start-up

    if json_output:
        typer.echo(json.dumps({name: m.description for name, m in METHODS.items()}, indent=2))
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Methods", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("what it does")
    for name, m in METHODS.items():
        table.add_row(name, escape(m.description))
    _stdout_console().print(table)


# --------------------------------------------------------------------------- demo
@app.command()
@handle_user_errors
def demo(
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")] = "demo-results",
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="NAME|FOLDER|HUB_ID",
        help="Model (default: the bundled olmoe-tiny, else the first bundled model).")] = None,
    device: Annotated[str, typer.Option("--device", "-d", metavar="NAME|YAML", help="Device config.")] = "pcm",
    quick: Annotated[bool, typer.Option("--quick", help="2 seeds and a few short blocks: a smoke test.")] = False,
    force: ForceOpt = False,
) -> None:
    """A small ROMER comparison with no arguments: bundled model and text, 8 methods, 3 chip instances.

    Writes results.json, results.csv, report.md and PNG plots to demo-results/ and prints the table.
    """
    from romer_aihwkit.models import list_bundled_models  # lazy: CLI start-up

    if model is None:
        bundled = list_bundled_models()
        if not bundled:
            raise UserError("no bundled model is installed; pass one with --model (a local folder or hub id)")
        model = "olmoe-tiny" if "olmoe-tiny" in bundled else bundled[0]
    if quick:
        sizes = dict(seeds=2, seq_len=32, eval_blocks=2, calib_blocks=2)
    else:
        sizes = dict(seeds=3, seq_len=128, eval_blocks=24, calib_blocks=16)
    settings = _compare_settings(models=[model], devices=[device], methods=list(DEMO_METHODS), seeds=sizes["seeds"],
                                 first_seed=0, t_inference=None, eval_text="bundled", calib_text="bundled",
                                 seq_len=sizes["seq_len"], eval_blocks=sizes["eval_blocks"],
                                 calib_blocks=sizes["calib_blocks"], batch_size=8)
    from rich.markup import escape

    _stderr_console().print(
        f"demo: {escape(model)} on {escape(device)}, methods {', '.join(DEMO_METHODS)}, {sizes['seeds']} chip instances, "
        f"{sizes['eval_blocks']} x {sizes['seq_len']} evaluation tokens (bundled Shakespeare)")
    _run_compare(settings, out, True, force, False, "demo")
    from pathlib import Path

    typer.echo(f"Demo finished: results, report and plots are in {Path(out).expanduser().resolve()}/ "
               f"(open report.md first)")


# --------------------------------------------------------------------------- convert
