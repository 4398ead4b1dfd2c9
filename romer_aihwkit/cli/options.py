"""Options and helpers shared by the commands: option declarations (declared once), value parsing, checks.

Every ``--model`` takes a bundled model name, a local folder or a Hugging Face hub id; list-valued
options take comma-separated values and may be repeated (``--methods none,romer --methods global``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from romer_aihwkit.errors import UserError

from .app import _stderr_console

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
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Write into --out even when it holds results of a different configuration, another command's "
                    "output or files romer-aihwkit did not write; the results, report and plots it discards are "
                    "removed first (files romer-aihwkit did not write are left alone).")]
StressOpt = Annotated[str | None, typer.Option(
    "--stress", metavar="SPEC",
    help="Function-preserving stress control applied to the digital model first, e.g. outliers:3x50 (3 hidden "
         "channels x50 in the norms feeding the MoE blocks, undone in their readers' weights) or "
         "heavy-weights:2x20; '+' combines, '@all' also stresses attention inputs. Recorded in every result.")]

MaxTextSizeOpt = Annotated[str | None, typer.Option(
    "--max-text-size", metavar="SIZE",
    help="Largest text read from one --eval-text/--calib-text/--train-text source, after decompression: bytes or "
         "with a unit (500M, 2G). Default 256M; a larger source is refused, naming the limit.")]
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
               "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def _parse_size(text: str | None, option: str = "--max-text-size") -> int | None:
    """'500M', '2G', '1048576' -> bytes; ``None`` -> None (the default limit)."""
    import re

    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS or not float(match.group(1)) * _SIZE_UNITS[unit] >= 1:
        raise UserError(f"invalid {option} {text!r}: give a positive size in bytes or with a unit (500M, 2G)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


TasksOpt = Annotated[list[str] | None, typer.Option(
    "--tasks", metavar="TASK[,TASK...]",
    help="lm-evaluation-harness tasks run on every chip instance (needs the eval extra): the bundled "
         "shakespeare_line_end, shakespeare_speaker (tag: shakespeare), tasks of --include-path, or lm-eval's own "
         "(those need the Hugging Face hub). Comma-separated or repeated.")]
IncludePathOpt = Annotated[str | None, typer.Option(
    "--include-path", metavar="DIR",
    help="Folder of lm-eval task YAMLs (lm-eval's --include_path). A task YAML can run Python code (`!function`); "
         "such a folder is refused unless --trust-task-code.")]
TrustTaskCodeOpt = Annotated[bool, typer.Option(
    "--trust-task-code",
    help="Allow --include-path task YAMLs that run Python code (`!function`, imported and run by lm-eval), like "
         "trust_remote_code for models. Only for folders you trust; the bundled tasks need no flag.")]
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
ControlsOpt = Annotated[bool, typer.Option(
    "--controls/--no-controls",
    help="Run every model-editing method also on the noise-free `ideal` device (same calibration data and seed) "
         "and report edit_ppl and recovered (default on; the results' settings record `controls`).")]


def _with_tasks_and_hwa(settings: Any, tasks: list[str] | None, include_path: str | None, limit: int | None,
                        num_fewshot: int | None, train_text: str, hwa_steps: int | None,
                        trust_task_code: bool = False) -> Any:
    """``settings`` with the downstream-task and HWA options (values checked by ``CompareSettings``; lm-eval
    and the task folder by :func:`~romer_aihwkit.experiments.resolve`)."""
    import dataclasses

    names = _split(tasks)
    if (include_path or limit is not None or num_fewshot is not None) and not names:
        raise UserError("--include-path, --limit and --num-fewshot apply to --tasks: give the tasks too")
    return dataclasses.replace(settings, tasks=names, task_include_path=include_path, task_limit=limit,
                               num_fewshot=num_fewshot, train_text=train_text, hwa_steps=hwa_steps,
                               trust_task_code=trust_task_code)


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


def _same_file(a: str, b: str) -> str | None:
    """``"the same file"`` or ``"identical content"`` when the calibration text ``b`` is the evaluation text ``a``."""
    from romer_aihwkit.data import same_text  # lazy: CLI start-up

    return same_text(a, b, split_a="test", split_b="validation")


def _fewer_blocks(option: str, asked: int, got: int, seq_len: int) -> str | None:
    """A warning when the text gave fewer blocks than asked (the run uses and records what it got)."""
    if got >= asked:
        return None
    return (f"{option} {asked} asked, but the text gives only {got} blocks of {seq_len} tokens: {got} were used "
            "(recorded in the results)")


class _OSErrorsAsUserErrors:
    """Context manager: an ``OSError`` (model not found on the hub, unreadable file, disk full) is
    the user's to fix, so it is reported as one line like the other user errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc is not None and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise UserError(str(exc)) from exc
        return False


def _load_model(name: str, require_tokenizer: bool = True):
    from romer_aihwkit.models import load_model  # lazy: CLI start-up

    with _OSErrorsAsUserErrors():
        return load_model(name, require_tokenizer=require_tokenizer)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

def _fmt_seconds(t: float) -> str:
    """Compact duration: 3600 -> '1 h', 86400 -> '1 d', 5 -> '5 s'."""
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= size and (t / size).is_integer():
            return f"{t / size:g} {unit}"
    return f"{t:g} s"
