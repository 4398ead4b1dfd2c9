"""The Monte-Carlo comparison: chip instances x methods x drift times, resumable, written atomically.

A results folder is safe to reuse: one run at a time holds its lock (:func:`results_folder_lock`,
``filelock``); ``settings.json`` records the settings and a content fingerprint of every input
(model files, device-config content, text files), and a rerun resumes only when both are unchanged;
a damaged ``settings.json`` or ``rows.jsonl`` is reported with the file (and line) to blame, and
``force=True`` (``--force``) discards the folder's rows and starts again.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..analog.matrix import matrix_seed
from ..atomic import atomic_write_text
from ..baselines.hwa import HWAConfig, hwa_checkpoint
from ..calibration.base import CalibrationReport
from ..checked_files import read_json
from ..data import same_text, text_blocks
from ..errors import ArtifactError, InputError, ResultsFolderError
from ..evaluation.perplexity import perplexity
from ..evaluation.records import ComparisonResults, ResultRow, SummaryEntry, load_rows
from ..evaluation.routing import perplexity_and_routing
from ..evaluation.stats import summarize, with_recovery
from ..evaluation.tasks import evaluate_tasks
from ..models import load_model, model_digest
from ..outputs import LOCK_FILE, ResultsLockedError, discard_outputs, results_folder_lock
from ..stress import apply_stress
from . import methods as protocol
from .best import choose_method
from .chip_loop import ROW_FILE, ChipLoop, chip_folder, clear_rows, process, shard
from .settings import (
    CONTROL_DEVICE,
    MAX_SEEDS,
    CompareSettings,
    ResolvedSettings,
    chip_instances,
    input_fingerprints,
    resolve,
)

__all__ = [
    "LOCK_FILE",
    "MAX_SEEDS",
    "ROW_FILE",
    "CompareSettings",
    "ResultsExistError",
    "ResultsLockedError",
    "chip_instances",
    "finished_rows",
    "input_fingerprints",
    "planned_rows",
    "resolve",
    "results_folder_lock",
    "run_comparison",
    "write_results",
]



class ResultsExistError(ResultsFolderError):
    """The output folder holds results of a different configuration or of changed inputs."""




CSV_COLUMNS = ("model", "device", "method", "t_inference", "seed", "ppl", "load_cv", "max_load_ratio",
               "tile_max_load_ratio", "router_fidelity", "load_entropy", "replaced_experts", "seconds")
"""Columns of ``results.csv`` before the control and downstream-task columns."""
CONTROL_COLUMNS = ("edit_ppl", "recovered", "max_masked_share")
"""Columns of ``results.csv`` after :data:`CSV_COLUMNS` when a row carries noise-free controls
(``max_masked_share``: the largest share of a MoE layer's experts that calibration masked)."""


def write_results(out_dir: Path, settings: dict[str, Any],
                  rows: Iterable[ResultRow | Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``results.json`` and ``results.csv`` atomically from the rows; returns the results dict.

    Rows are deduplicated by their key (the last one wins) and sorted by it; rows with a noise-free
    control get ``recovered`` from the ``global`` row of their chip instance
    (:func:`~romer_aihwkit.evaluation.stats.with_recovery`); the summary follows the settings' order
    of models, devices and methods.
    """
    return _write_results(out_dir, _assemble(settings, rows)).to_dict()


def _assemble(settings: dict[str, Any], rows: Iterable[ResultRow | Mapping[str, Any]]) -> ComparisonResults:
    """The results of the rows (see :func:`write_results`)."""
    unique: dict[tuple, ResultRow] = {r.key: r for r in map(ResultRow.coerce, rows)}
    ordered = [unique[key] for key in sorted(unique)]
    typed = with_recovery(ordered)
    return ComparisonResults(settings, tuple(typed), tuple(_in_settings_order(summarize(typed), settings)))


def _write_results(out_dir: Path, results: ComparisonResults) -> ComparisonResults:
    typed = results.rows
    data = results.to_dict()
    atomic_write_text(out_dir / "results.json", json.dumps(data, indent=2, default=str))
    task_columns = list(dict.fromkeys(name for r in typed for name in r.task_values()))
    controls = CONTROL_COLUMNS if any(r.edit_ppl is not None for r in typed) else ()
    lines = [",".join(CSV_COLUMNS + controls + tuple(task_columns))]
    for row in typed:
        plain, tasks = row.to_dict(layers=False), row.task_values()
        plain["max_masked_share"] = max(row.masked_share) if row.masked_share else None
        lines.append(",".join([_csv(plain.get(c)) for c in CSV_COLUMNS + controls]
                              + [_csv(tasks.get(c)) for c in task_columns]))
    atomic_write_text(out_dir / "results.csv", "\n".join(lines) + "\n")
    return results


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

    path = _settings_file(out_dir)
    if not path.exists():
        return None
    try:
        return read_json(path, "results settings")
    except ArtifactError as exc:
        raise ResultsFolderError(f"{exc}. Pass --force to discard the folder's rows and start again, or choose "
                                 "another --out folder") from None


def _check_out_dir(out_dir: Path, settings: CompareSettings, inputs: dict[str, str], force: bool) -> None:
    """Refuse (unless ``force``, which then discards the rows) to mix rows of other settings or
    changed inputs into ``out_dir``, or to build on a damaged ``settings.json``/``rows.jsonl``."""
    try:
        _check_reusable(out_dir, settings, inputs)
    except ResultsFolderError:
        if not force:
            raise
        discard_outputs(out_dir, "comparison")  # rows, results, report, plots and HWA cache of what is discarded


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
        why = "the simulation code or library versions changed since" if changed == ["engine"] else (
            "the files changed since" if "engine" not in changed else "the files and the simulation code changed since")
        raise ResultsExistError(
            f"{out_dir} holds rows computed from other contents of {', '.join(changed)} ({why}); "
            "pass --force to discard those rows and recompute, or choose another --out folder"
        )


def finished_rows(out_dir: Path, settings: CompareSettings | ResolvedSettings) -> set[tuple]:
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


# ------------------------------------------------------------------ one run per folder
def planned_rows(settings: CompareSettings | ResolvedSettings, rank: int = 0, world_size: int = 1) -> list[tuple]:
    """Row keys ``(model, device, method, t, seed)`` this process computes: chip instances round-robin."""
    resolved = resolve(settings)
    return [
        (model, device, method, t, seed)
        for model, device, t, seed in shard(list(resolved.chip_instances()), rank, world_size)
        for method in resolved.settings.methods
    ]


def _seed_everything(seed: int, *parts: object) -> None:
    """Per-forward noise (output noise) reproducible per (chip instance, method), in any process.

    ``parts`` name the model by its content fingerprint (never by the folder it lives in), the
    device, the method and the drift time."""

    torch.manual_seed(matrix_seed(int(seed), "|".join(map(str, parts)), "forward"))


def run_comparison(
    settings: CompareSettings | ResolvedSettings,
    out_dir: str | os.PathLike,
    resume: bool = True,
    force: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    on_row: Callable[[ResultRow], Any] | None = None,
) -> ComparisonResults:
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
        The typed results (:class:`~romer_aihwkit.evaluation.records.ComparisonResults`: ``settings``,
        ``rows``, ``summary``, ``out_dir``); ``to_dict()`` is ``results.json``'s content.

    Raises:
        ResultsLockedError: Another run holds ``out_dir``.
        ResultsExistError: ``out_dir`` holds rows of other settings or of inputs whose contents
            changed (model files, device-config content, text files), unless ``force``.
        ResultsFolderError: A damaged ``settings.json`` or ``rows.jsonl`` (unless ``force``).
    """
    resolved = resolve(settings)  # devices, drift times, dependencies and inputs: looked at once, before the folder
    ctx = process(rank, world_size)
    with chip_folder(out_dir, "run_comparison", force, ctx) as folder:
        return _run(resolved, folder, resume, force, ctx, on_row)


def _run(resolved: ResolvedSettings, out_dir: Path, resume: bool, force: bool, ctx: Any,
         on_row: Any) -> ComparisonResults:

    settings = resolved.settings
    if ctx.is_main:
        inputs = dict(resolved.inputs)
        _check_out_dir(out_dir, settings, inputs, force)
        if not resume:
            clear_rows(out_dir)
        atomic_write_text(_settings_file(out_dir), json.dumps(
            {"fingerprint": settings.fingerprint(), "inputs": inputs, **settings.to_dict()}, indent=2))
    ctx.wait_for_everyone()  # rank 0 has checked (and possibly cleared) the folder
    loop = ChipLoop(out_dir, ctx, ResultRow.from_dict)
    notes: list[str] = []
    """Warnings about what the run could not do as asked; recorded in results.json (settings.warnings)."""
    overlap = _same_text(settings.eval_text, settings.calib_text)
    if overlap:
        notes.append(f"calibration and evaluation text are {overlap} ({settings.eval_text}, {settings.calib_text}): "
                     "the sets overlap and calibrated methods will look better than they are")
        warnings.warn(notes[-1], stacklevel=2)
    blocks_used: dict[str, dict[str, int]] = {}
    methods = {m: protocol.get_method(m) for m in settings.methods}
    todo = loop.todo(planned_rows(resolved, ctx.rank, ctx.world_size))
    digital_ppl: dict[str, float] = {}
    digital_tasks: dict[str, dict[str, dict[str, float]]] = {}
    hwa_records: dict[str, dict[str, Any]] = {}
    for model_name in settings.models:
        mine = [key for key in todo if key[0] == model_name]
        model_id = resolved.model_ids[model_name]  # seeds follow the model's content, not its folder
        digital, tokenizer = load_model(model_name, require_tokenizer=True)
        if settings.stress:
            apply_stress(digital, settings.stress)
        digital.eval()
        eval_blocks = _blocks("eval_text (--eval-text)", text_blocks, settings.eval_text, tokenizer,
                              seq_len=settings.seq_len, split="test", max_blocks=settings.eval_blocks)
        calib_blocks = _blocks("calib_text (--calib-text)", text_blocks, settings.calib_text, tokenizer,
                               seq_len=settings.seq_len, split="validation", max_blocks=settings.calib_blocks)
        blocks_used[model_name] = {"eval_blocks": int(eval_blocks.shape[0]), "calib_blocks": int(calib_blocks.shape[0])}
        for option, asked in (("eval_blocks", settings.eval_blocks), ("calib_blocks", settings.calib_blocks)):
            got = blocks_used[model_name][option]
            if asked is not None and got < asked:
                notes.append(f"--{option.replace('_', '-')} {asked} asked, but the text gives {model_name} only {got} "
                             f"blocks of {settings.seq_len} tokens: {got} were used (recorded in blocks_used)")
                warnings.warn(notes[-1], stacklevel=2)
        digital_ppl[model_name] = perplexity(digital, eval_blocks, batch_size=settings.batch_size, progress=False)
        if settings.tasks and ctx.is_main:
            digital_tasks[model_name] = _run_tasks(digital, tokenizer, settings)
        convert = _Conversions(digital, tokenizer, model_name, resolved, out_dir, hwa_records, calib_blocks)
        rows = _ModelRows(model_name, model_id, digital, tokenizer, eval_blocks, calib_blocks,
                          digital_ppl[model_name], convert, methods, resolved)
        loop.run(mine, rows.row, on_row)
    loop.wait()  # every process's rows are on disk now
    plain = settings.to_dict()
    plain["digital_ppl"] = digital_ppl
    if blocks_used:
        plain["blocks_used"] = blocks_used
        for option in ("eval_blocks", "calib_blocks"):
            counts = {used[option] for used in blocks_used.values()}
            if len(counts) == 1:
                plain[option] = counts.pop()  # what was used, not what was asked
    if notes:
        plain["warnings"] = notes
    if digital_tasks:
        plain["digital_tasks"] = digital_tasks
    if hwa_records:
        plain["hwa_training"] = hwa_records
    results = _assemble(plain, loop.rows())
    if ctx.is_main:
        _write_results(out_dir, results)
    ctx.wait_for_everyone()
    return replace(results, out_dir=out_dir)


class _ModelRows:
    """The rows of one digital model: a method on a chip instance per key (conversions, ``best``
    choices, controls and digital fractions shared by its chip instances)."""

    def __init__(self, model_name: str, model_id: str, digital: torch.nn.Module, tokenizer: Any,
                 eval_blocks: torch.Tensor, calib_blocks: torch.Tensor, digital_ppl: float, convert: _Conversions,
                 methods: dict[str, Any], resolved: ResolvedSettings) -> None:
        self.resolved, settings = resolved, resolved.settings
        self.model_name, self.model_id, self.digital, self.tokenizer = model_name, model_id, digital, tokenizer
        self.eval_blocks, self.calib_blocks, self.digital_ppl = eval_blocks, calib_blocks, digital_ppl
        self.convert, self.methods, self.settings = convert, methods, settings
        self.edits: dict[tuple, float] = {}
        self.choices: dict[tuple, tuple[Any, dict[str, Any]]] = {}
        self.fractions: dict[str, float] = {}

    def row(self, key: tuple) -> ResultRow:
        """Convert (cached), program with the chip seed, calibrate and measure the row of ``key``."""

        _, device, method_name, t_value, seed = key
        method = self.methods[method_name]
        selection = None
        if method.candidates:  # `best`: resolved once per model, device and drift time
            if (device, method_name, t_value) not in self.choices:
                self.choices[(device, method_name, t_value)] = choose_method(
                    self.digital, self.resolved.device(device), method, self.calib_blocks, t_value, batch_size=self.settings.batch_size)
            method, selection = self.choices[(device, method_name, t_value)]
        model = self.convert(device, method, device)
        start = time.perf_counter()
        _seed_everything(seed, self.model_id, device, method_name, t_value)
        report = protocol.apply_method(model, method, seed, t_value, self.calib_blocks,
                                       batch_size=self.settings.batch_size)
        extra: dict[str, Any] = {}
        if selection is not None:
            report["selection"] = selection
            extra["choice"] = selection["choice"]
        if method.name not in self.fractions:
            self.fractions[method.name] = protocol.digital_parameter_fraction(self.digital, method)["fraction"]
        extra["digital_fraction"] = self.fractions[method.name]
        calibration = CalibrationReport.from_dict(report)
        ppl, stats = perplexity_and_routing(model, self.eval_blocks, self.settings.batch_size, progress=False)
        layers = tuple({"load": list(layer.load), "reference_load": list(layer.reference_load)}
                       for layer in stats.layers)
        tasks = _run_tasks(model, self.tokenizer, self.settings) if self.settings.tasks else None
        edit = None
        if self.settings.controls:
            edit = 0.0  # a setting of the chip alone: on a noise-free chip it is the digital model
            if method.edits_model:
                control = (method.name, seed, device if method.hwa else None)  # best: the method it chose
                if device == CONTROL_DEVICE:  # this row is its own control
                    self.edits[control] = ppl - self.digital_ppl
                if control not in self.edits:
                    self.edits[control] = _control_ppl(
                        self.convert(CONTROL_DEVICE, method, device), method, seed, self.model_id,
                        self.calib_blocks, self.eval_blocks, self.resolved) - self.digital_ppl
                edit = self.edits[control]
        row = ResultRow(
            model=self.model_name, device=device, method=method_name, t_inference=t_value, seed=seed, ppl=ppl,
            load_cv=stats.load_cv, max_load_ratio=stats.max_load_ratio,
            tile_max_load_ratio=stats.tile_max_load_ratio, router_fidelity=stats.router_fidelity,
            load_entropy=stats.load_entropy, replaced_experts=calibration.replaced_experts,
            digital_ppl=self.digital_ppl, stress=self.settings.stress or "none",
            seconds=time.perf_counter() - start, layers=layers, tasks=tasks, edit_ppl=edit,
            masked_share=calibration.masked_share, extra=extra)
        if not math.isfinite(ppl):
            warnings.warn(f"non-finite perplexity for {key}", stacklevel=2)
        return row


class _Conversions:
    """Converted models of one digital model, cached per device and conversion (HWA: per training device)."""

    def __init__(self, digital: torch.nn.Module, tokenizer: Any, model_name: str, resolved: ResolvedSettings,
                 out_dir: Path, hwa_records: dict[str, dict[str, Any]], calib_blocks: torch.Tensor) -> None:
        self.digital, self.tokenizer, self.model_name = digital, tokenizer, model_name
        self.calib_blocks = calib_blocks
        self.resolved, self.settings = resolved, resolved.settings
        self.out_dir, self.hwa_records = out_dir, hwa_records
        self.converted: dict[tuple, torch.nn.Module] = {}
        self.hwa_models: dict[str, torch.nn.Module] = {}

    def __call__(self, device: str, method: Any, hwa_device: str) -> torch.nn.Module:
        """``method`` converted for ``device``; an HWA method converts the model trained for ``hwa_device``."""

        key = (device, hwa_device if method.hwa else None, method.conversion_key())
        if key not in self.converted:
            source = self.digital
            if method.hwa:
                if hwa_device not in self.hwa_models:
                    self.hwa_models[hwa_device], record = _hwa_model(
                        self.digital, self.tokenizer, self.model_name, hwa_device, self.settings, self.out_dir)
                    self.hwa_records[f"{self.model_name} on {hwa_device}"] = record
                source = self.hwa_models[hwa_device]
            self.converted[key] = protocol.prepare_model(source, self.resolved.device(device), method, calib_batches=self.calib_blocks,
                                                         batch_size=self.settings.batch_size)
        return self.converted[key]


def _run_tasks(model: torch.nn.Module, tokenizer: Any, settings: CompareSettings) -> dict[str, dict[str, float]]:
    return evaluate_tasks(model, tokenizer, settings.tasks, include_path=settings.task_include_path,
                          trust_task_code=settings.trust_task_code,
                          limit=settings.task_limit, num_fewshot=settings.num_fewshot,
                          batch_size=max(16, settings.batch_size))


def _hwa_model(digital: torch.nn.Module, tokenizer: Any, model_name: str, device: str, settings: CompareSettings,
               out_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The HWA-trained model for ``device``, cached in ``out_dir/hwa`` (shared by all chip instances and reruns)."""

    config = HWAConfig() if settings.hwa_steps is None else HWAConfig(steps=settings.hwa_steps)
    return hwa_checkpoint(digital, tokenizer, model_name, device, out_dir / "hwa", train_text=settings.train_text,
                          config=config, fingerprint=model_digest(model_name), stress=settings.stress)


def _blocks(option: str, text_blocks: Any, source: str, tokenizer: Any, **kwargs: Any) -> torch.Tensor:
    """``text_blocks(source, ...)``, its input errors naming the option they came from."""
    try:
        return text_blocks(source, tokenizer, **kwargs)
    except InputError as exc:
        raise InputError(f"{option}: {exc}") from None


def _control_ppl(model: torch.nn.Module, method: Any, seed: int, model_id: str, calib_blocks: torch.Tensor,
                 eval_blocks: torch.Tensor, resolved: ResolvedSettings) -> float:
    """``method`` on the noise-free control device: the same calibration data and chip seed."""

    assert resolved.control is not None  # controls are on
    settings, t = resolved.settings, resolved.control.t_inference[0]
    _seed_everything(seed, model_id, CONTROL_DEVICE, method.name, t)
    protocol.apply_method(model, method, seed, t, calib_blocks, batch_size=settings.batch_size)
    return perplexity(model, eval_blocks, batch_size=settings.batch_size, progress=False)




def _same_text(a: str, b: str) -> str | None:
    """``"the same file"`` / ``"identical content"`` when the calibration text is the evaluation text."""

    return same_text(a, b, split_a="test", split_b="validation")
