"""The Monte-Carlo comparison: chip instances x methods x drift times, resumable, written atomically.

A results folder is safe to reuse: one run at a time holds its lock (:func:`results_folder_lock`,
``filelock``); ``settings.json`` records the settings and a content fingerprint of every input
(model files, device-config content, text files), and a rerun resumes only when both are unchanged;
a damaged ``settings.json`` or ``rows.jsonl`` is reported with the file (and line) to blame, and
``force=True`` (``--force``) discards the folder's rows and starts again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text, default_file_mode
from ..errors import ArtifactError, InputError, ResultsFolderError
from ..evaluation.records import ComparisonResults, ResultRow, SummaryEntry, load_rows
from ..evaluation.stats import summarize

__all__ = [
    "CompareSettings",
    "ResultsExistError",
    "ResultsLockedError",
    "chip_instances",
    "finished_rows",
    "input_fingerprints",
    "planned_rows",
    "results_folder_lock",
    "run_comparison",
    "write_results",
]

ROW_FILE = "rows.jsonl"
LOCK_FILE = ".romer-aihwkit.lock"
MAX_SEEDS = 1000
"""Most chip instances one comparison accepts (each costs a programming pass per method)."""


_OPTIONAL_DEFAULTS: dict[str, Any] = {"tasks": [], "task_include_path": None, "task_limit": None,
                                      "num_fewshot": None, "train_text": "bundled", "hwa_steps": None}
"""Settings added after results were first written: at these values they leave the fingerprint alone."""


class ResultsExistError(ResultsFolderError):
    """The output folder holds results of a different configuration or of changed inputs."""


class ResultsLockedError(ResultsFolderError):
    """Another run holds the output folder's lock."""


@dataclass
class CompareSettings:
    """Everything that determines the numbers of a comparison (stored with the results)."""

    models: list[str]
    devices: list[str] = field(default_factory=lambda: ["pcm"])
    methods: list[str] = field(default_factory=lambda: ["none", "global", "hetero", "romer"])
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    t_inference: list[float | None] = field(default_factory=lambda: [None])
    """Drift times in seconds; ``None`` means each device's default."""
    eval_text: str = "bundled"
    calib_text: str = "bundled"
    seq_len: int = 128
    eval_blocks: int | None = 32
    calib_blocks: int | None = 16
    batch_size: int = 8
    stress: str | None = None
    """Function-preserving stress spec applied to every digital model first (:func:`romer_aihwkit.stress.apply_stress`)."""
    tasks: list[str] = field(default_factory=list)
    """lm-eval tasks run on every chip instance (:func:`~romer_aihwkit.evaluation.tasks.evaluate_tasks`)."""
    task_include_path: str | None = None
    """Folder of lm-eval task YAMLs besides the bundled tasks (``--include-path``)."""
    task_limit: int | None = None
    """Documents per task (lm-eval's ``limit``; ``None``: all)."""
    num_fewshot: int | None = None
    """Few-shot examples per task (``None``: each task's default)."""
    train_text: str = "bundled"
    """Training text of hardware-aware training (methods ``hwa``, ``hwa+romer``; ``--train-text``)."""
    hwa_steps: int | None = None
    """HWA optimizer steps (``None``: :class:`~romer_aihwkit.baselines.hwa.HWAConfig`'s default)."""

    def __post_init__(self) -> None:
        from ..devices import load_device_config
        from .methods import get_method

        if not self.models:
            raise InputError("give at least one model")
        if not self.seeds:
            raise InputError("give at least one seed (--seeds must be >= 1)")
        if len(self.seeds) > MAX_SEEDS:
            raise InputError(f"--seeds must be at most {MAX_SEEDS} chip instances, got {len(self.seeds)}")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31 for s in self.seeds):
            raise InputError(f"seeds must be integers in [0, 2**31), got {self.seeds[:5]}...")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds must be distinct, got {self.seeds}")
        for method in self.methods:
            get_method(method)
        for device in self.devices:
            cfg = load_device_config(device)
            for t in self.t_inference:
                cfg.check_t_inference(cfg.t_inference if t is None else t)
        if self.seq_len < 2:
            raise InputError("seq_len must be at least 2")
        from ..stress import stress_label

        self.stress = None if stress_label(self.stress) == "none" else stress_label(self.stress)
        self._check_tasks_and_hwa()

    def _check_tasks_and_hwa(self) -> None:
        if self.tasks:
            from ..evaluation.tasks import require_lm_eval

            require_lm_eval()
        if self.task_include_path is not None and not Path(self.task_include_path).expanduser().is_dir():
            raise InputError(f"--include-path {self.task_include_path}: no such folder of lm-eval task YAMLs")
        if self.task_limit is not None and self.task_limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.task_limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise InputError(f"--num-fewshot must be at least 0, got {self.num_fewshot}")
        if self.hwa_steps is not None and self.hwa_steps < 1:
            raise InputError(f"--hwa-steps must be at least 1, got {self.hwa_steps}")

    def fingerprint(self) -> str:
        """Identity of the numbers: everything but the seeds and methods, which may be extended."""
        data = asdict(self)
        data.pop("seeds")
        data.pop("methods")
        if data.get("stress") is None:
            data.pop("stress")  # results written before stress existed keep their identity
        for key, default in _OPTIONAL_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)  # likewise for results written before tasks and HWA existed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a killed run, so that appended rows start on a new line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


CSV_COLUMNS = ("model", "device", "method", "t_inference", "seed", "ppl", "load_cv", "max_load_ratio",
               "tile_max_load_ratio", "router_fidelity", "load_entropy", "replaced_experts", "seconds")
"""Columns of ``results.csv`` before the downstream-task columns (``task/metric``)."""


def write_results(out_dir: Path, settings: dict[str, Any],
                  rows: Iterable[ResultRow | Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``results.json`` and ``results.csv`` atomically from the rows; returns the results dict.

    Rows are deduplicated by their key (the last one wins) and sorted by it; the summary follows
    the settings' order of models, devices and methods.
    """
    typed = sorted({r.key: r for r in map(ResultRow.coerce, rows)}.values(), key=lambda r: r.key)
    results = ComparisonResults(settings, tuple(typed), tuple(_in_settings_order(summarize(typed), settings)))
    data = results.to_dict()
    atomic_write_text(out_dir / "results.json", json.dumps(data, indent=2, default=str))
    task_columns = list(dict.fromkeys(name for r in typed for name in r.task_values()))
    lines = [",".join(CSV_COLUMNS + tuple(task_columns))]
    for row in typed:
        plain, tasks = row.to_dict(layers=False), row.task_values()
        lines.append(",".join([_csv(plain.get(c)) for c in CSV_COLUMNS] + [_csv(tasks.get(c)) for c in task_columns]))
    atomic_write_text(out_dir / "results.csv", "\n".join(lines) + "\n")
    return data


def _in_settings_order(summary: list[SummaryEntry], settings: Mapping[str, Any]) -> list[SummaryEntry]:
    """Summary entries ordered as the settings list models, devices and methods (rows are sorted by name)."""
    order = {key: {v: i for i, v in enumerate(settings.get(plural) or [])}
             for key, plural in (("model", "models"), ("device", "devices"), ("method", "methods"))}

    def rank(entry: SummaryEntry) -> tuple:
        return (order["model"].get(entry.model, len(order["model"])),
                order["device"].get(entry.device, len(order["device"])), float(entry.t_inference),
                order["method"].get(entry.method, len(order["method"])))

    return sorted(summary, key=rank)


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace(",", ";")


def _settings_file(out_dir: Path) -> Path:
    return out_dir / "settings.json"


def _read_settings(out_dir: Path) -> dict[str, Any] | None:
    """``settings.json`` of a results folder (``None`` if absent); a damaged file is a clear error."""
    from ..artifacts import read_json

    path = _settings_file(out_dir)
    if not path.exists():
        return None
    try:
        return read_json(path, "results settings")
    except ArtifactError as exc:
        raise ResultsFolderError(f"{exc}. Pass --force to discard the folder's rows and start again, or choose "
                                 "another --out folder") from None


def _clear_rows(out_dir: Path) -> None:
    for p in out_dir.glob("rows*.jsonl"):
        p.unlink()


def _check_out_dir(out_dir: Path, settings: CompareSettings, inputs: dict[str, str], force: bool) -> None:
    """Refuse (unless ``force``, which then discards the rows) to mix rows of other settings or
    changed inputs into ``out_dir``, or to build on a damaged ``settings.json``/``rows.jsonl``."""
    try:
        _check_reusable(out_dir, settings, inputs)
    except ResultsFolderError:
        if not force:
            raise
        _clear_rows(out_dir)


def _check_reusable(out_dir: Path, settings: CompareSettings, inputs: dict[str, str]) -> None:
    saved = _read_settings(out_dir)
    rows = load_rows(out_dir)
    if saved is None:
        if rows:
            raise ResultsExistError(f"{out_dir} holds rows without settings.json; pass --force to discard them")
        return
    if not rows:
        return  # an earlier run finished no row: nothing to lose
    if saved.get("fingerprint") != settings.fingerprint():
        raise ResultsExistError(
            f"{out_dir} holds results of a different configuration (models/devices/texts/drift times differ); "
            "pass --force to overwrite them or choose another --out folder"
        )
    before = saved.get("inputs")
    changed = sorted(k for k in inputs if not isinstance(before, dict) or before.get(k) != inputs[k])
    if changed:
        raise ResultsExistError(
            f"{out_dir} holds rows computed from other contents of {', '.join(changed)} (the files changed since); "
            "pass --force to discard those rows and recompute, or choose another --out folder"
        )


def finished_rows(out_dir: Path, settings: CompareSettings) -> set[tuple]:
    """Keys of the rows already in ``out_dir`` for this configuration (empty for another one or
    for changed inputs).

    Raises:
        ResultsFolderError: A damaged ``settings.json`` or ``rows.jsonl``.
    """
    out_dir = Path(out_dir)
    saved = _read_settings(out_dir)
    if saved is None or saved.get("fingerprint") != settings.fingerprint():
        return set()
    if saved.get("inputs") != input_fingerprints(settings):
        return set()
    return {r.key for r in load_rows(out_dir)}


# ------------------------------------------------------------------ content fingerprints of the inputs
_SAMPLED_ABOVE = 8 * 2**20  # files larger than this are hashed from 16 sampled blocks plus their size
_BLOCK = 64 * 1024


def _file_digest(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}|{size}|".encode())
    with open(path, "rb") as f:
        if size <= _SAMPLED_ABOVE:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return
        for i in range(16):
            f.seek(i * (size - _BLOCK) // 15)
            digest.update(f.read(_BLOCK))


def _tree_digest(root: Path, suffixes: tuple[str, ...] | None = None) -> str:
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        if suffixes is None or p.name.endswith(suffixes):
            digest.update(str(p.relative_to(root) if p != root else p.name).encode())
            _file_digest(p, digest)
    return digest.hexdigest()[:16]


def _model_digest(name: str) -> str:
    from ..models import MODELS_DIR, list_bundled_models

    path = MODELS_DIR / name if name in list_bundled_models() else Path(name).expanduser()
    if path.is_dir():
        return _tree_digest(path)
    return f"hub id {name} (contents not checked)"


def _text_digest(source: str) -> str:
    from ..data.corpus import CORPUS_DIR

    if source.lower() in ("bundled", "shakespeare"):
        return _tree_digest(CORPUS_DIR)
    path = Path(source).expanduser()
    if not path.exists():
        return "missing"
    return _tree_digest(path)


def input_fingerprints(settings: CompareSettings) -> dict[str, str]:
    """Content hash of every input of a comparison: each model's files, device config and text.

    Large files (weights) are hashed from their size and 16 sampled 64 KiB blocks, small files
    fully; device configs by their resolved content
    (:func:`romer_aihwkit.artifacts.device_fingerprint`). A hub id is recorded as such, its
    contents are not checked.

    Returns:
        ``{"model NAME": hash, "device NAME": hash, "eval_text": hash, "calib_text": hash}``.
    """
    from ..artifacts import device_fingerprint

    out = {f"model {m}": _model_digest(m) for m in settings.models}
    out.update({f"device {d}": device_fingerprint(d) for d in settings.devices})
    out["eval_text"] = _text_digest(settings.eval_text)
    out["calib_text"] = _text_digest(settings.calib_text)
    if settings.train_text != "bundled":
        out["train_text"] = _text_digest(settings.train_text)
    if settings.task_include_path is not None:
        out["task_include_path"] = _text_digest(settings.task_include_path)
    return out


# ------------------------------------------------------------------ one run per folder
_LOCKS: dict[str, Any] = {}


def results_folder_lock(out_dir: str | os.PathLike) -> Any:
    """The folder's lock (re-entrant in this process); entering it refuses at once when another
    process holds it.

    Use as ``with results_folder_lock(out):``. The lock is an OS file lock (``filelock``), so a
    killed run leaves no stale lock.

    Raises:
        ResultsLockedError: Another run holds the lock (on entering).
    """
    from filelock import FileLock, Timeout

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = str((out_dir / LOCK_FILE).resolve())
    if path not in _LOCKS:
        _LOCKS[path] = FileLock(path, timeout=0, mode=default_file_mode(), thread_local=False)
    lock = _LOCKS[path]

    class _Held:
        def __enter__(self) -> Any:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise ResultsLockedError(
                    f"{out_dir} is in use by another romer-aihwkit run (lock {path}); wait for it to finish or "
                    "choose another --out folder") from None
            return lock

        def __exit__(self, *exc: object) -> None:
            lock.release()

    return _Held()


def chip_instances(settings: CompareSettings) -> list[tuple[str, str, float, int]]:
    """``(model, device, t_inference, seed)`` of every chip instance, in run order."""
    from ..devices import load_device_config

    out: list[tuple[str, str, float, int]] = []
    for model in settings.models:
        for device in settings.devices:
            default_t = load_device_config(device).t_inference
            for t in settings.t_inference:
                out.extend((model, device, float(default_t if t is None else t), int(seed)) for seed in settings.seeds)
    return out


def planned_rows(settings: CompareSettings, rank: int = 0, world_size: int = 1) -> list[tuple]:
    """Row keys ``(model, device, method, t, seed)`` this process computes: chip instances round-robin."""
    return [
        (model, device, method, t, seed)
        for i, (model, device, t, seed) in enumerate(chip_instances(settings))
        if i % world_size == rank
        for method in settings.methods
    ]


def _seed_everything(seed: int, *parts: object) -> None:
    """Per-forward noise (output noise) reproducible per (chip instance, method), in any process."""
    from ..analog.matrix import matrix_seed

    torch.manual_seed(matrix_seed(int(seed), "|".join(map(str, parts)), "forward"))


def run_comparison(
    settings: CompareSettings,
    out_dir: str | os.PathLike,
    resume: bool = True,
    force: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    on_row: Callable[[ResultRow], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every method on the same chip instances and aggregate over instances.

    For each model, device, drift time and seed: every method's model is programmed with that seed
    (the same programming noise for methods that share a conversion), drifted, calibrated on the
    calibration blocks (disjoint from evaluation blocks), then evaluated (perplexity and routing
    stats in one pass). Each finished row is appended to ``rows[.rankN].jsonl`` at once, so an
    interrupted run resumes where it stopped; ``results.json``/``results.csv`` are rewritten
    atomically. ``on_row`` is called with each new :class:`~romer_aihwkit.evaluation.records.ResultRow`.

    Under a multi-process launch (``accelerate launch``, torchrun; or explicit ``rank`` and
    ``world_size``) chip instances are sharded round-robin; every process returns the merged
    results once all are done. All random draws are seeded per chip instance and method, so the
    rows equal those of a single-process run.

    Returns:
        The ``results.json`` dict (:meth:`ComparisonResults.to_dict
        <romer_aihwkit.evaluation.records.ComparisonResults.to_dict>`; read it typed with ``ComparisonResults.from_dict``).

    Raises:
        ResultsLockedError: Another run holds ``out_dir``.
        ResultsExistError: ``out_dir`` holds rows of other settings or of inputs whose contents
            changed (model files, device-config content, text files), unless ``force``.
        ResultsFolderError: A damaged ``settings.json`` or ``rows.jsonl`` (unless ``force``).
    """
    from ..evaluation.distributed import ProcessContext, process_context

    ctx = process_context() if rank is None else ProcessContext(rank, world_size or 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not ctx.is_main:
        return _run(settings, out_dir, resume, force, ctx, on_row)
    with results_folder_lock(out_dir):
        return _run(settings, out_dir, resume, force, ctx, on_row)


def _run(settings: CompareSettings, out_dir: Path, resume: bool, force: bool, ctx: Any, on_row: Any) -> dict[str, Any]:
    from ..data import text_blocks
    from ..evaluation.perplexity import perplexity
    from ..evaluation.routing import perplexity_and_routing
    from ..models import load_model
    from . import methods as protocol

    if ctx.is_main:
        inputs = input_fingerprints(settings)
        _check_out_dir(out_dir, settings, inputs, force)
        if not resume:
            _clear_rows(out_dir)
        atomic_write_text(_settings_file(out_dir), json.dumps(
            {"fingerprint": settings.fingerprint(), "inputs": inputs, **asdict(settings)}, indent=2))
    ctx.wait_for_everyone()  # rank 0 has checked (and possibly cleared) the folder
    done = {r.key for r in load_rows(out_dir)}
    row_path = out_dir / (ROW_FILE if ctx.world_size == 1 else f"rows.rank{ctx.rank}.jsonl")
    _drop_torn_tail(row_path)
    if _same_text(settings.eval_text, settings.calib_text) and settings.eval_text != "bundled":
        warnings.warn(
            f"calibration and evaluation text are the same file ({settings.eval_text}): the sets overlap "
            "and calibrated methods will look better than they are", stacklevel=2)
    methods = {m: protocol.get_method(m) for m in settings.methods}
    todo = [key for key in planned_rows(settings, ctx.rank, ctx.world_size) if key not in done]
    digital_ppl: dict[str, float] = {}
    digital_tasks: dict[str, dict[str, dict[str, float]]] = {}
    hwa_records: dict[str, dict[str, Any]] = {}
    for model_name in settings.models:
        mine = [key for key in todo if key[0] == model_name]
        digital, tokenizer = load_model(model_name)
        if settings.stress:
            from ..stress import apply_stress

            apply_stress(digital, settings.stress)
        digital.eval()
        eval_blocks = _blocks("eval_text (--eval-text)", text_blocks, settings.eval_text, tokenizer,
                              seq_len=settings.seq_len, split="test", max_blocks=settings.eval_blocks)
        calib_blocks = _blocks("calib_text (--calib-text)", text_blocks, settings.calib_text, tokenizer,
                               seq_len=settings.seq_len, split="validation", max_blocks=settings.calib_blocks)
        digital_ppl[model_name] = perplexity(digital, eval_blocks, batch_size=settings.batch_size, progress=False)
        if settings.tasks and ctx.is_main:
            digital_tasks[model_name] = _run_tasks(digital, tokenizer, settings)
        converted: dict[tuple, torch.nn.Module] = {}
        hwa_models: dict[str, torch.nn.Module] = {}
        choices: dict[tuple, tuple[Any, dict[str, Any]]] = {}
        fractions: dict[str, float] = {}
        for key in mine:
            _, device, method_name, t_value, seed = key
            method = methods[method_name]
            selection = None
            if method.candidates:  # `best`: resolved once per model, device and drift time
                if (device, method_name, t_value) not in choices:
                    from .best import choose_method

                    choices[(device, method_name, t_value)] = choose_method(
                        digital, device, method, calib_blocks, t_value, batch_size=settings.batch_size)
                method, selection = choices[(device, method_name, t_value)]
            conv_key = (device, method.conversion_key())
            if conv_key not in converted:
                source = digital
                if method.hwa:
                    if device not in hwa_models:
                        hwa_models[device], record = _hwa_model(digital, tokenizer, model_name, device, settings, out_dir)
                        hwa_records[f"{model_name} on {device}"] = record
                    source = hwa_models[device]
                converted[conv_key] = protocol.prepare_model(source, device, method, calib_batches=calib_blocks,
                                                             batch_size=settings.batch_size)
            model = converted[conv_key]
            start = time.perf_counter()
            _seed_everything(seed, model_name, device, method_name, t_value)
            report = protocol.apply_method(model, method, seed, t_value, calib_blocks, batch_size=settings.batch_size)
            extra: dict[str, Any] = {}
            if selection is not None:
                report["selection"] = selection
                extra["choice"] = selection["choice"]
            if method.name not in fractions:
                fractions[method.name] = protocol.digital_parameter_fraction(digital, method)["fraction"]
            extra["digital_fraction"] = fractions[method.name]
            ppl, stats = perplexity_and_routing(model, eval_blocks, settings.batch_size, progress=False)
            layers = tuple({"load": layer["load"], "reference_load": layer["reference_load"]}
                           for layer in stats["layers"])
            tasks = _run_tasks(model, tokenizer, settings) if settings.tasks else None
            row = ResultRow(
                model=model_name, device=device, method=method_name, t_inference=t_value, seed=seed, ppl=ppl,
                load_cv=stats["load_cv"], max_load_ratio=stats["max_load_ratio"],
                tile_max_load_ratio=stats["tile_max_load_ratio"], router_fidelity=stats["router_fidelity"],
                load_entropy=stats["load_entropy"], replaced_experts=_replaced(report),
                digital_ppl=digital_ppl[model_name], stress=settings.stress or "none",
                seconds=time.perf_counter() - start, layers=layers, tasks=tasks, extra=extra)
            if not math.isfinite(ppl):
                warnings.warn(f"non-finite perplexity for {key}", stacklevel=2)
            with open(row_path, "a") as f:
                f.write(json.dumps(row.to_dict()) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if on_row is not None:
                on_row(row)
    ctx.wait_for_everyone()  # every process's rows are on disk now
    plain = asdict(settings)
    plain["digital_ppl"] = digital_ppl
    if digital_tasks:
        plain["digital_tasks"] = digital_tasks
    if hwa_records:
        plain["hwa_training"] = hwa_records
    rows = load_rows(out_dir)
    if ctx.is_main:
        results = write_results(out_dir, plain, rows)
    else:
        results = ComparisonResults(plain, tuple(rows), tuple(summarize(rows))).to_dict()
    ctx.wait_for_everyone()
    return results


def _run_tasks(model: torch.nn.Module, tokenizer: Any, settings: CompareSettings) -> dict[str, dict[str, float]]:
    from ..evaluation.tasks import evaluate_tasks

    return evaluate_tasks(model, tokenizer, settings.tasks, include_path=settings.task_include_path,
                          limit=settings.task_limit, num_fewshot=settings.num_fewshot,
                          batch_size=max(16, settings.batch_size))


def _hwa_model(digital: torch.nn.Module, tokenizer: Any, model_name: str, device: str, settings: CompareSettings,
               out_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The HWA-trained model for ``device``, cached in ``out_dir/hwa`` (shared by all chip instances and reruns)."""
    from ..baselines.hwa import HWAConfig, hwa_checkpoint

    config = HWAConfig() if settings.hwa_steps is None else HWAConfig(steps=settings.hwa_steps)
    return hwa_checkpoint(digital, tokenizer, model_name, device, out_dir / "hwa", train_text=settings.train_text,
                          config=config, fingerprint=_model_digest(model_name))


def _blocks(option: str, text_blocks: Any, source: str, tokenizer: Any, **kwargs: Any) -> torch.Tensor:
    """``text_blocks(source, ...)``, its input errors naming the option they came from."""
    try:
        return text_blocks(source, tokenizer, **kwargs)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


def _replaced(report: dict[str, Any]) -> int:
    callbacks = report.get("callbacks", {})
    return int(sum(cb.get("replaced_experts", 0) for cb in callbacks.values()))


def _same_text(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except OSError:
        return False
