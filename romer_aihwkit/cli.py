"""The ``romer-aihwkit`` command line.

Conventions every command follows (so the CLI stays consistent as commands are added):

* Decorate each command with :func:`handle_user_errors`: user errors (:data:`USER_ERRORS`:
  :class:`~romer_aihwkit.errors.UserError` and its subclasses, ``FileNotFoundError``, and the
  converter's ``NoMoEBlocksError``/``UnsupportedMoEError``) become one red ``Error: ...`` line on
  stderr and exit code 2, without a traceback. Any other exception, a bare ``ValueError``
  included, is a bug and keeps its traceback.
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
    FileNotFoundError,
)
"""Exception types reported as a one-line error instead of a traceback (see also
:data:`_USER_VALUE_ERRORS`)."""

_USER_VALUE_ERRORS = ("romer_aihwkit.analog.convert.NoMoEBlocksError",
                      "romer_aihwkit.analog.convert.UnsupportedMoEError",
                      "romer_aihwkit.adapters.base.UnsupportedLayoutError")
"""``ValueError`` subclasses of modules that do not derive from :class:`UserError` but mean a
model this package cannot convert (looked up lazily, so the CLI starts without torch)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one red line) rather than a bug (traceback)."""
    if isinstance(exc, USER_ERRORS):
        return True
    for qualified in _USER_VALUE_ERRORS:
        module_name, _, name = qualified.rpartition(".")
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False

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
        except Exception as exc:
            if not is_user_error(exc):
                raise
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
    from romer_aihwkit.devices import FIELD_RANGES, load_device_config

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
    table = Table(title=f"Device config {cfg.name}", show_header=True)
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
    from romer_aihwkit.devices import FIELD_CHOICES, FIELD_RANGES

    if key in FIELD_CHOICES:
        return " | ".join(FIELD_CHOICES[key])
    if key not in FIELD_RANGES:
        return ""
    lo, hi, unit = FIELD_RANGES[key]
    name = key.split(".")[-1] + ": " if "." in key else ""
    return f"{name}{lo:g} .. {hi:g} {unit}"


def _fmt_seconds(t: float) -> str:
    """Compact duration: 3600 -> '1 h', 86400 -> '1 d', 5 -> '5 s'."""
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size and (t / size).is_integer():
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


# --------------------------------------------------------------------------- shared helpers
# Every `--model` takes a bundled model name, a local folder or a Hugging Face hub id; list-valued
# options take comma-separated values and may be repeated (`--methods none,romer --methods global`).

DEMO_METHODS = ["none", "global", "hetero", "digital-router", "romer-norm", "romer-replace", "romer", "romer-auto"]
"""Methods of `romer-aihwkit demo`: baselines, the ROMER ablation and ROMER with held-out selection."""

_T_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "day": 86400.0,
            "y": 365 * 86400.0, "year": 365 * 86400.0}

ModelOpt = Annotated[
    list[str],
    typer.Option("--model", "-m", metavar="NAME|FOLDER|HUB_ID",
                 help="Model(s): a bundled name, a local folder or a Hugging Face hub id; comma-separated "
                      "or repeated."),
]
OutOpt = Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")]
EvalTextOpt = Annotated[str, typer.Option(
    "--eval-text", metavar="bundled|FILE|FOLDER",
    help="Evaluation text: 'bundled' (Shakespeare test plays), a .txt/.txt.gz file, a folder of them or a "
         "saved dataset.")]
CalibTextOpt = Annotated[str, typer.Option(
    "--calib-text", metavar="bundled|FILE|FOLDER",
    help="Calibration text: 'bundled' (Shakespeare validation plays, disjoint from the bundled test plays) "
         "or a file/folder. Must not overlap the evaluation text.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per block.")]
EvalBlocksOpt = Annotated[int, typer.Option("--eval-blocks", help="Evaluation blocks (the first N).")]
CalibBlocksOpt = Annotated[int, typer.Option("--calib-blocks", help="Calibration blocks (the first N).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Blocks per forward pass.")]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Number of simulated chip instances (seeds).")]
FirstSeedOpt = Annotated[int, typer.Option("--first-seed", help="Seed of the first chip instance.")]
TInfListOpt = Annotated[
    list[str] | None,
    typer.Option("--t-inference", "-t", metavar="T[,T...]",
                 help="Drift time(s) after programming: seconds or with a unit (1s, 1h, 1d, 1y); 'none' = the "
                      "device's default. Comma-separated or repeated."),
]
TInfOpt = Annotated[
    str | None,
    typer.Option("--t-inference", "-t", metavar="T",
                 help="Drift time after programming: seconds or with a unit (1h, 1d, 1y); 'none' = the device's "
                      "default."),
]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="Reuse finished rows in the output folder (same configuration).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite results of a different configuration in --out.")]
StressOpt = Annotated[str | None, typer.Option(
    "--stress", metavar="SPEC",
    help="Function-preserving stress control applied to the digital model first, e.g. outliers:3x50 (3 hidden "
         "channels x50 in the norms feeding the MoE blocks, undone in their readers' weights) or "
         "heavy-weights:2x20; '+' combines, '@all' also stresses attention inputs. Recorded in every result.")]


TasksOpt = Annotated[list[str] | None, typer.Option(
    "--tasks", metavar="TASK[,TASK...]",
    help="lm-evaluation-harness tasks run on every chip instance (needs the eval extra): the bundled "
         "shakespeare_line_end, shakespeare_speaker (tag: shakespeare), tasks of --include-path, or lm-eval's own "
         "(those need the Hugging Face hub). Comma-separated or repeated.")]
IncludePathOpt = Annotated[str | None, typer.Option(
    "--include-path", metavar="DIR", help="Folder of lm-eval task YAMLs (lm-eval's --include_path).")]
LimitOpt = Annotated[int | None, typer.Option(
    "--limit", metavar="N", help="Documents per task (the first N; default: all).")]
FewshotOpt = Annotated[int | None, typer.Option(
    "--num-fewshot", metavar="K", help="Few-shot examples per task (default: each task's own).")]
TrainTextOpt = Annotated[str, typer.Option(
    "--train-text", metavar="bundled|FILE|FOLDER",
    help="Training text of hardware-aware training (methods hwa, hwa+romer): 'bundled' (the Shakespeare train "
         "plays, disjoint from calibration and evaluation plays) or a file/folder.")]
HwaStepsOpt = Annotated[int | None, typer.Option(
    "--hwa-steps", metavar="N", help="Optimizer steps of hardware-aware training (default 100).")]


def _with_tasks_and_hwa(settings: Any, tasks: list[str] | None, include_path: str | None, limit: int | None,
                        num_fewshot: int | None, train_text: str, hwa_steps: int | None) -> Any:
    """``settings`` with the downstream-task and HWA options (validated again by ``CompareSettings``)."""
    import dataclasses

    names = _split(tasks)
    if (include_path or limit is not None or num_fewshot is not None) and not names:
        raise UserError("--include-path, --limit and --num-fewshot apply to --tasks: give the tasks too")
    return dataclasses.replace(settings, tasks=names, task_include_path=include_path, task_limit=limit,
                               num_fewshot=num_fewshot, train_text=train_text, hwa_steps=hwa_steps)


def _split(values: list[str] | str | None) -> list[str]:
    """Comma-separated and/or repeated option values -> a flat list without blanks."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


def _parse_t(text: str | None) -> float | None:
    """'3600', '1h', '1 d', '1e6', 'none' -> seconds (None = the device's default)."""
    import re

    if text is None or text.strip().lower() in ("none", "default", ""):
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _T_UNITS:
        raise UserError(f"invalid --t-inference {text!r}: give seconds (3600), a time with a unit "
                        f"(1s, 1h, 1d, 1y) or 'none' for the device's default")
    return float(match.group(1)) * _T_UNITS[unit]


def _parse_t_list(values: list[str] | None) -> list[float | None]:
    ts = [_parse_t(v) for v in _split(values)] or [None]
    if len(set(ts)) != len(ts):
        raise UserError(f"--t-inference values must be distinct, got {', '.join(_split(values))}")
    return ts


MAX_SEQ_LEN = 1 << 20
"""Largest --seq-len accepted (a block longer than any model's context fails inside the model)."""
MAX_BLOCKS = 1 << 20
"""Largest --eval-blocks / --calib-blocks / --batch-size accepted."""
MAX_SEED = 2**31 - 1
"""Largest chip-instance seed."""


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _check_at_most(**values: tuple[int, int]) -> None:
    for name, (value, limit) in values.items():
        if value > limit:
            raise UserError(f"--{name.replace('_', '-')} must be at most {limit}, got {value}")


def _check_seed(seed: int, option: str, last: int | None = None) -> None:
    for value in (seed, seed if last is None else last):
        if not 0 <= value <= MAX_SEED:
            raise UserError(f"{option} must give seeds in [0, {MAX_SEED}], got {value}")


def _warn(message: str) -> None:
    from rich.markup import escape

    _stderr_console().print(f"[bold yellow]Warning:[/bold yellow] [yellow]{escape(message)}[/yellow]")


def _same_file(a: str, b: str) -> bool:
    from pathlib import Path

    if a.lower() in ("bundled", "shakespeare") or b.lower() in ("bundled", "shakespeare"):
        return False
    try:
        return Path(a).expanduser().exists() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


class _OSErrorsAsUserErrors:
    """Context manager: an ``OSError`` (model not found on the hub, unreadable file, disk full) is
    the user's to fix, so it is reported as one line like the other user errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise UserError(str(exc)) from exc
        return False


def _load_model(name: str):
    from romer_aihwkit.models import load_model

    with _OSErrorsAsUserErrors():
        return load_model(name)


def _already_done(out_dir: Any, settings: Any, keys: set[tuple], resume: bool, force: bool = False) -> int:
    from romer_aihwkit.errors import ResultsFolderError
    from romer_aihwkit.evaluation.runner import finished_rows

    try:
        return len(finished_rows(out_dir, settings) & keys) if resume else 0
    except ResultsFolderError:
        if force:  # the run discards the damaged rows
            return 0
        raise


def _run_compare(settings: Any, out: str, resume: bool, force: bool, json_output: bool) -> dict[str, Any]:
    """Run the comparison with a progress bar, then write report.md and plots (rank 0), holding the
    output folder's lock throughout so that a second run on the same --out is refused."""
    from pathlib import Path

    from romer_aihwkit.evaluation.distributed import process_context
    from romer_aihwkit.evaluation.runner import results_folder_lock

    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if process_context().rank != 0:
        return _run_compare_unlocked(settings, out, resume, force, json_output)
    with _OSErrorsAsUserErrors():
        lock = results_folder_lock(out_dir)
    with lock:
        return _run_compare_unlocked(settings, out, resume, force, json_output)


def _run_compare_unlocked(settings: Any, out: str, resume: bool, force: bool, json_output: bool) -> dict[str, Any]:
    import warnings
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from romer_aihwkit.evaluation.plots import write_plots
    from romer_aihwkit.evaluation.report import print_summary, write_report
    from romer_aihwkit.evaluation.runner import run_comparison

    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if _same_file(settings.eval_text, settings.calib_text):
        _warn(f"--calib-text and --eval-text are the same file ({settings.eval_text}): calibration and "
              "evaluation data overlap, so calibrated methods will look better than they are")
    from romer_aihwkit.evaluation.distributed import process_context
    from romer_aihwkit.evaluation.runner import planned_rows

    ctx = process_context()
    rank, world_size = ctx.rank, ctx.world_size
    keys = set(planned_rows(settings, rank, world_size))
    done = _already_done(out_dir, settings, keys, resume, force)
    err = _stderr_console()
    if done and rank == 0:
        err.print(f"resuming: {done} of {len(keys)} rows already in {out_dir}")

    progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
                        disable=json_output and not err.is_terminal)
    with progress:
        label = f"rank {rank}: " if world_size > 1 else ""
        task = progress.add_task(f"{label}loading model and text, digital perplexity", total=len(keys), completed=done)

        def on_row(row: dict[str, Any]) -> None:
            progress.update(task, advance=1, description=(
                f"{label}{row['method']} seed {row['seed']} t={row['t_inference']:g}s ppl {row['ppl']:.2f}"))

        with warnings.catch_warnings():
            # the CLI already warned about overlapping texts, visibly
            warnings.filterwarnings("ignore", message="calibration and evaluation text are the same file")
            with _OSErrorsAsUserErrors():
                results = run_comparison(settings, out_dir, resume=resume, force=force, on_row=on_row)
        progress.update(task, description=f"{label}done")

    if rank != 0:
        return results
    plots = write_plots(results, out_dir)
    report = write_report(results, out_dir, plots=plots)
    if json_output:
        typer.echo(json.dumps(results["summary"], indent=2, default=str))
    else:
        print_summary(results, _stdout_console())
    files = ["results.json", "results.csv", report.name] + [p.name for p in plots]
    err.print(f"Wrote {', '.join(files)} to [bold]{out_dir}[/bold]")
    return results


def _compare_settings(models: list[str], devices: list[str], methods: list[str], seeds: int, first_seed: int,
                      t_inference: list[str] | None, eval_text: str, calib_text: str, seq_len: int,
                      eval_blocks: int, calib_blocks: int, batch_size: int, stress: str | None = None) -> Any:
    from romer_aihwkit.evaluation.runner import MAX_SEEDS, CompareSettings

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
        calib_blocks=calib_blocks, batch_size=batch_size, stress=stress,
    )


# --------------------------------------------------------------------------- compare / evaluate
_COMPARE_HELP = (
    "Compare methods over simulated chip instances: results.json/.csv, report.md, PNG plots.\n\n"
    "Every method runs on the same chip instances (one per seed): program, drift to each --t-inference, "
    "calibrate on --calib-text when the method calibrates, evaluate perplexity and routing on --eval-text. "
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
) -> None:
    """Compare methods over simulated chip instances: results.json/.csv, report.md, PNG plots."""
    settings = _compare_settings(_split(model), _split(devices), _split(methods), seeds, first_seed, t_inference,
                                 eval_text, calib_text, seq_len, eval_blocks, calib_blocks, batch_size, stress)
    settings = _with_tasks_and_hwa(settings, tasks, include_path, limit, num_fewshot, train_text, hwa_steps)
    _run_compare(settings, out, resume, force, json_output)


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
) -> None:
    """Evaluate one method over simulated chip instances (`compare` with a single method)."""
    methods = _split(method)
    if len(methods) != 1:
        raise UserError(f"evaluate takes one --method, got {method!r}; use `compare` for several")
    settings = _compare_settings(_split(model), [device], methods, seeds, first_seed, t_inference, eval_text,
                                 calib_text, seq_len, eval_blocks, calib_blocks, batch_size)
    settings = _with_tasks_and_hwa(settings, tasks, include_path, limit, num_fewshot, train_text, hwa_steps)
    _run_compare(settings, out, resume, force, json_output)


@app.command("methods")
@handle_user_errors
def methods_command(json_output: JsonOpt = False) -> None:
    """List the comparison methods (baselines, ROMER and its ablations)."""
    from romer_aihwkit.baselines.methods import METHODS

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
    from romer_aihwkit.models import list_bundled_models

    if model is None:
        bundled = list_bundled_models()
        if not bundled:
            raise UserError("no bundled model is installed; pass one with --model (a local folder or hub id)")
        model = "olmoe-tiny" if "olmoe-tiny" in bundled else bundled[0]
    if quick:
        sizes = dict(seeds=2, seq_len=32, eval_blocks=2, calib_blocks=2)
    else:
        sizes = dict(seeds=3, seq_len=128, eval_blocks=24, calib_blocks=16)
    settings = _compare_settings([model], [device], list(DEMO_METHODS), sizes["seeds"], 0, None, "bundled",
                                 "bundled", sizes["seq_len"], sizes["eval_blocks"], sizes["calib_blocks"], 8)
    _stderr_console().print(
        f"demo: {model} on {device}, methods {', '.join(DEMO_METHODS)}, {sizes['seeds']} chip instances, "
        f"{sizes['eval_blocks']} x {sizes['seq_len']} evaluation tokens (bundled Shakespeare)")
    _run_compare(settings, out, True, force, False)
    from pathlib import Path

    typer.echo(f"Demo finished: results, report and plots are in {Path(out).expanduser().resolve()}/ "
               f"(open report.md first)")


# --------------------------------------------------------------------------- convert
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
                                   analog_attention=analog_attention)
    summary = analog_summary(amodel)
    info: dict[str, Any] = {"model": model, "device": config.name, "analog_router": not digital_router,
                            "analog_attention": analog_attention, "analog_summary": summary,
                            "moe_blocks": [{"name": n, "family": f} for n, f in amodel.analog_state.blocks],
                            "seed": seed, "t_inference": None, "files": []}
    if seed is not None:
        amodel.program_analog_weights(seed=seed)
        amodel.drift_analog_weights(t)
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
    amodel = convert_to_analog_moe(digital, config, analog_attention=analog_attention)
    amodel.program_analog_weights(seed=seed)
    amodel.drift_analog_weights(t)
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
) -> None:
    """Where the analog error comes from: an error budget by component x non-ideality, per-layer statistics.

    Writes DIR/diagnosis.json, DIR/report.md (with a ranked reading), DIR/layers_heatmap.png and DIR/budget.png.
    """
    from pathlib import Path

    from romer_aihwkit.data import text_blocks
    from romer_aihwkit.evaluation.diagnose import diagnose as run_diagnosis
    from romer_aihwkit.evaluation.diagnose import write_diagnosis
    from romer_aihwkit.evaluation.runner import MAX_SEEDS

    _check_positive(seeds=seeds, seq_len=seq_len, eval_blocks=eval_blocks, calib_blocks=calib_blocks,
                    batch_size=batch_size)
    _check_at_most(seeds=(seeds, MAX_SEEDS), seq_len=(seq_len, MAX_SEQ_LEN), eval_blocks=(eval_blocks, MAX_BLOCKS),
                   calib_blocks=(calib_blocks, MAX_BLOCKS), batch_size=(batch_size, MAX_BLOCKS))
    _check_seed(first_seed, "--first-seed", last=first_seed + seeds - 1)
    from romer_aihwkit.stress import parse_stress_spec

    parse_stress_spec(stress)  # a bad spec fails before the model loads
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    digital, tokenizer = _load_model(model)
    with _OSErrorsAsUserErrors():
        try:
            blocks = text_blocks(eval_text, tokenizer, seq_len=seq_len, split="test", max_blocks=eval_blocks)
        except UserError as exc:
            raise UserError(f"--eval-text: {exc}") from None
        calib = None
        if calib_text is not None:
            if _same_file(eval_text, calib_text):
                _warn(f"--calib-text and --eval-text are the same file ({eval_text})")
            try:
                calib = text_blocks(calib_text, tokenizer, seq_len=seq_len, split="validation", max_blocks=calib_blocks)
            except UserError as exc:
                raise UserError(f"--calib-text: {exc}") from None
    result = run_diagnosis(digital, device, blocks, seeds=list(range(first_seed, first_seed + seeds)),
                           calib_batches=calib, t_inference=_parse_t(t_inference), analog_attention=analog_attention,
                           stress=stress, batch_size=batch_size, progress=not json_output)
    result["settings"].update(model=model, eval_text=eval_text, calib_text=calib_text, seq_len=seq_len,
                              eval_blocks=int(blocks.shape[0]), batch_size=batch_size)
    with _OSErrorsAsUserErrors():
        files = write_diagnosis(result, out_dir)
    if json_output:
        typer.echo(json.dumps({k: result[k] for k in ("settings", "digital_ppl", "budget", "reading")}, indent=2))
        return
    console = _stdout_console()
    for i, line in enumerate(result["reading"], 1):
        console.print(f"{i}. {line}", markup=False)
    _stderr_console().print(f"Wrote {', '.join(f.name for f in files)} to [bold]{out_dir}[/bold]")


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


if __name__ == "__main__":  # pragma: no cover
    main()
