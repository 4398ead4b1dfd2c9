"""The Monte-Carlo comparison: chip instances x methods x drift times, resumable, written atomically."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from .stats import summarize_rows

__all__ = ["CompareSettings", "ResultsExistError", "chip_instances", "finished_rows", "load_rows", "planned_rows", "run_comparison", "write_results"]

ROW_FILE = "rows.jsonl"


class ResultsExistError(ValueError):
    """The output folder holds results of a different configuration."""


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

    def __post_init__(self) -> None:
        from ..baselines import get_method
        from ..devices import load_device_config

        if not self.models:
            raise ValueError("give at least one model")
        if not self.seeds:
            raise ValueError("give at least one seed (--seeds must be >= 1)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for method in self.methods:
            get_method(method)
        for device in self.devices:
            cfg = load_device_config(device)
            for t in self.t_inference:
                cfg.check_t_inference(cfg.t_inference if t is None else t)
        if self.seq_len < 2:
            raise ValueError("seq_len must be at least 2")

    def fingerprint(self) -> str:
        """Identity of the numbers: everything but the seeds and methods, which may be extended."""
        data = asdict(self)
        data.pop("seeds")
        data.pop("methods")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_rows(out_dir: Path) -> list[dict[str, Any]]:
    """Finished rows of every process (``rows*.jsonl``); a torn last line from a kill is ignored."""
    rows = []
    for path in sorted(out_dir.glob("rows*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a killed run, so that appended rows start on a new line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _row_key(row: dict[str, Any]) -> tuple:
    return (row["model"], row["device"], row["method"], float(row["t_inference"]), int(row["seed"]))


def write_results(out_dir: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``results.json`` and ``results.csv`` atomically from the rows; returns the results dict."""
    rows = sorted({_row_key(r): r for r in rows}.values(), key=_row_key)
    results = {"settings": settings, "rows": [{k: v for k, v in r.items() if k != "layers"} for r in rows],
               "summary": _in_settings_order(summarize_rows(rows), settings)}
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, default=str))
    columns = ["model", "device", "method", "t_inference", "seed", "ppl", "load_cv", "max_load_ratio",
               "tile_max_load_ratio", "router_fidelity", "load_entropy", "replaced_experts", "seconds"]
    lines = [",".join(columns)] + [",".join(_csv(r.get(c)) for c in columns) for r in rows]
    atomic_write_text(out_dir / "results.csv", "\n".join(lines) + "\n")
    return results


def _in_settings_order(summary: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary entries ordered as the settings list models, devices and methods (rows are sorted by name)."""
    order = {key: {v: i for i, v in enumerate(settings.get(plural) or [])}
             for key, plural in (("model", "models"), ("device", "devices"), ("method", "methods"))}

    def rank(entry: dict[str, Any]) -> tuple:
        return (*(order[k].get(entry[k], len(order[k])) for k in ("model", "device")), float(entry["t_inference"]),
                order["method"].get(entry["method"], len(order["method"])))

    return sorted(summary, key=rank)


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace(",", ";")


def _settings_file(out_dir: Path) -> Path:
    return out_dir / "settings.json"


def _check_out_dir(out_dir: Path, settings: CompareSettings, force: bool) -> None:
    path = _settings_file(out_dir)
    if not path.exists():
        if load_rows(out_dir) and not force:
            raise ResultsExistError(f"{out_dir} holds rows without settings; use --force to overwrite")
        return
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") == settings.fingerprint():
        return  # same configuration: finished rows are reused
    if not load_rows(out_dir):
        return  # an earlier run of another configuration finished no row: nothing to lose
    if force:
        for p in out_dir.glob("rows*.jsonl"):
            p.unlink()
        return
    raise ResultsExistError(
        f"{out_dir} holds results of a different configuration (models/devices/texts/drift times differ); "
        "pass --force to overwrite them or choose another --out folder"
    )


def finished_rows(out_dir: Path, settings: CompareSettings) -> set[tuple]:
    """Keys of the rows already in ``out_dir`` for this configuration (empty for another one)."""
    path = _settings_file(out_dir)
    try:
        if not path.is_file() or json.loads(path.read_text()).get("fingerprint") != settings.fingerprint():
            return set()
    except (ValueError, OSError):
        return set()
    return {_row_key(r) for r in load_rows(out_dir)}


def chip_instances(settings: CompareSettings) -> list[tuple[str, str, float, int]]:
    """``(model, device, t_inference, seed)`` of every chip instance, in run order."""
    from ..devices import load_device_config

    out = []
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


def _seed_everything(*parts: object) -> None:
    """Per-forward noise (output noise) reproducible per (chip instance, method), in any process."""
    from ..analog.matrix import matrix_seed

    torch.manual_seed(matrix_seed(int(parts[0]), "|".join(map(str, parts[1:])), "forward"))


def run_comparison(
    settings: CompareSettings,
    out_dir: str | os.PathLike,
    resume: bool = True,
    force: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    on_row=None,
) -> dict[str, Any]:
    """Evaluate every method on the same chip instances and aggregate over instances.

    For each model, device, drift time and seed: every method's model is programmed with that seed
    (the same programming noise for methods that share a conversion), drifted, calibrated on the
    calibration blocks (disjoint from evaluation blocks), then evaluated (perplexity and routing
    stats in one pass). Each finished row is appended to ``rows[.rankN].jsonl`` at once, so an
    interrupted run resumes where it stopped; ``results.json``/``results.csv`` are rewritten
    atomically.

    Under a multi-process launch (``accelerate launch``, torchrun; or explicit ``rank`` and
    ``world_size``) chip instances are sharded round-robin; every process returns the merged
    results once all are done. All random draws are seeded per chip instance and method, so the
    rows equal those of a single-process run.
    """
    from ..baselines import apply_method, get_method, prepare_model
    from ..data import text_blocks
    from ..models import load_model
    from .distributed import ProcessContext, process_context
    from .perplexity import perplexity
    from .routing import perplexity_and_routing

    ctx = process_context() if rank is None else ProcessContext(rank, world_size or 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        _check_out_dir(out_dir, settings, force)
        if not resume:
            for p in out_dir.glob("rows*.jsonl"):
                p.unlink()
        atomic_write_text(_settings_file(out_dir), json.dumps({"fingerprint": settings.fingerprint(), **asdict(settings)}, indent=2))
    ctx.wait_for_everyone()  # rank 0 has checked (and possibly cleared) the folder
    done = {_row_key(r) for r in load_rows(out_dir)}
    row_path = out_dir / (ROW_FILE if ctx.world_size == 1 else f"rows.rank{ctx.rank}.jsonl")
    _drop_torn_tail(row_path)
    if _same_text(settings.eval_text, settings.calib_text) and settings.eval_text != "bundled":
        warnings.warn(
            f"calibration and evaluation text are the same file ({settings.eval_text}): the sets overlap "
            "and calibrated methods will look better than they are", stacklevel=2)
    methods = {m: get_method(m) for m in settings.methods}
    todo = [key for key in planned_rows(settings, ctx.rank, ctx.world_size) if key not in done]
    digital_ppl: dict[str, float] = {}
    for model_name in settings.models:
        mine = [key for key in todo if key[0] == model_name]
        digital, tokenizer = load_model(model_name)
        digital.eval()
        eval_blocks = text_blocks(settings.eval_text, tokenizer, seq_len=settings.seq_len, split="test",
                                  max_blocks=settings.eval_blocks)
        calib_blocks = text_blocks(settings.calib_text, tokenizer, seq_len=settings.seq_len, split="validation",
                                   max_blocks=settings.calib_blocks)
        digital_ppl[model_name] = perplexity(digital, eval_blocks, batch_size=settings.batch_size, progress=False)
        converted: dict[tuple, torch.nn.Module] = {}
        for key in mine:
            _, device, method_name, t_value, seed = key
            method = methods[method_name]
            conv_key = (device, method.conversion_key())
            if conv_key not in converted:
                converted[conv_key] = prepare_model(digital, device, method)
            model = converted[conv_key]
            start = time.perf_counter()
            _seed_everything(seed, model_name, device, method_name, t_value)
            report = apply_method(model, method, seed, t_value, calib_blocks, batch_size=settings.batch_size)
            ppl, stats = perplexity_and_routing(model, eval_blocks, settings.batch_size, progress=False)
            row = {
                "model": model_name, "device": device, "method": method_name,
                "t_inference": t_value, "seed": seed, "ppl": ppl,
                "load_cv": stats["load_cv"], "max_load_ratio": stats["max_load_ratio"],
                "tile_max_load_ratio": stats["tile_max_load_ratio"],
                "router_fidelity": stats["router_fidelity"], "load_entropy": stats["load_entropy"],
                "replaced_experts": _replaced(report),
                "digital_ppl": digital_ppl[model_name],
                "seconds": time.perf_counter() - start,
                "layers": [{"load": layer["load"], "reference_load": layer["reference_load"]}
                           for layer in stats["layers"]],
            }
            if not math.isfinite(ppl):
                warnings.warn(f"non-finite perplexity for {key}", stacklevel=2)
            with open(row_path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if on_row is not None:
                on_row(row)
    ctx.wait_for_everyone()  # every process's rows are on disk now
    plain = asdict(settings)
    plain["digital_ppl"] = digital_ppl
    rows = load_rows(out_dir)
    if ctx.is_main:
        results = write_results(out_dir, plain, rows)
    else:
        results = {"settings": plain, "rows": rows, "summary": summarize_rows(rows)}
    ctx.wait_for_everyone()
    return results


def _replaced(report: dict[str, Any]) -> int:
    callbacks = report.get("callbacks", {})
    return int(sum(cb.get("replaced_experts", 0) for cb in callbacks.values()))


def _same_text(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except OSError:
        return False
