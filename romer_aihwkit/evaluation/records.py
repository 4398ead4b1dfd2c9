"""Typed records of a comparison: result rows, summary entries and the results a report reads.

Each record is a frozen dataclass with ``to_dict()``/``from_dict()`` that round-trip the files'
formats exactly (``rows.jsonl``, ``results.json``): keys absent from an older file stay absent,
keys this package does not know are kept (``extra``), and key order is the one the runner writes.
:func:`load_rows` reads the ``rows*.jsonl`` files of a results folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from ..deprecation import deprecated_item
from ..errors import ResultsFolderError

__all__ = [
    "ComparisonResults",
    "Record",
    "ResultRow",
    "Stat",
    "SummaryEntry",
    "METRICS",
    "GROUP_KEYS",
    "ROW_KEYS",
    "TASK_METRICS",
    "CONTROL_METRICS",
    "load_rows",
]

METRICS = ("ppl", "load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity", "load_entropy")
"""Per-row metrics summarised over chip instances."""
GROUP_KEYS = ("model", "device", "method", "t_inference")
"""A summary entry groups the rows of one model, device, method and drift time."""
ROW_KEYS = ("model", "device", "method", "t_inference", "seed", "ppl")
"""Keys every result row has."""
TASK_METRICS = ("acc", "acc_norm")
"""Downstream-task metrics summarised over chip instances (rows keep lm-eval's stderr too)."""
CONTROL_METRICS = ("edit_ppl", "recovered")
"""Metrics of the noise-free controls, summarised like :data:`METRICS` where rows carry them.

``edit_ppl``: the method's perplexity on the noise-free ``ideal`` device (same calibration data and
seed) minus the digital perplexity, i.e. what the method changes in the model itself (0 for methods
that only change the chip). ``recovered``: the share of the analog gap ``ppl(global) - digital``
(``global`` on the same chip instance) that the method removes beyond its edit,
``((ppl(global) - ppl) + edit_ppl) / (ppl(global) - digital)``."""

_OPTIONAL_ROW_KEYS = ("load_cv", "max_load_ratio", "tile_max_load_ratio", "router_fidelity", "load_entropy",
                      "replaced_experts", "digital_ppl", "stress", "seconds", "layers", "tasks",
                      "edit_ppl", "recovered", "masked_share")
_FIX = "remove that line, or pass --force to discard the folder's rows and start again"


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ResultRow:
    """One method evaluated on one chip instance (``model, device, method, t_inference, seed``).

    Optional metrics are ``None`` when a row does not have them (rows of older versions); such keys
    are left out of :meth:`to_dict`, so a row read and written again is unchanged.
    """

    model: str
    device: str
    method: str
    t_inference: float
    """Drift time in seconds."""
    seed: int
    """The chip instance."""
    ppl: float
    load_cv: float | None = None
    max_load_ratio: float | None = None
    tile_max_load_ratio: float | None = None
    router_fidelity: float | None = None
    load_entropy: float | None = None
    replaced_experts: int | None = None
    """Experts ROMER replaced on this chip instance (all layers)."""
    digital_ppl: float | None = None
    stress: str | None = None
    """The stress spec of the digital model (``"none"``); ``None`` in rows written before stress existed."""
    seconds: float | None = None
    layers: tuple[dict[str, Any], ...] | None = None
    """Per MoE layer: ``{"load": [...], "reference_load": [...]}`` (``rows*.jsonl`` only, not results.json)."""
    tasks: dict[str, dict[str, Any]] | None = None
    """Downstream tasks: ``{task: {metric: value}}`` (lm-eval's ``acc``, ``acc_stderr``, ...)."""
    edit_ppl: float | None = None
    """The noise-free control: this method on the ``ideal`` device minus the digital perplexity
    (see :data:`CONTROL_METRICS`); ``None`` without controls."""
    recovered: float | None = None
    """Share of the analog gap (``global`` - digital on this chip instance) the method removes
    beyond its edit (see :data:`CONTROL_METRICS`); ``None`` without controls or a ``global`` row."""
    masked_share: list[float] | None = None
    """Per MoE layer: the share of its routed experts that calibration masked (ROMER's expert replacement)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this package does not know, kept as they are."""

    @property
    def key(self) -> tuple[str, str, str, float, int]:
        """``(model, device, method, t_inference, seed)``: a row's identity in a results folder."""
        return (self.model, self.device, self.method, float(self.t_inference), int(self.seed))

    def metric(self, name: str) -> Any:
        """The value of metric ``name`` (``None`` when absent)."""
        return getattr(self, name, None) if name in METRICS or name in CONTROL_METRICS else self.extra.get(name)

    def task_values(self) -> dict[str, float]:
        """``{"task/metric": value}`` of the downstream tasks (``acc``, ``acc_norm``), empty without tasks."""
        return {f"{task}/{metric}": float(value) for task, metrics in (self.tasks or {}).items()
                for metric, value in metrics.items() if metric in TASK_METRICS and value is not None}

    def to_dict(self, layers: bool = True) -> dict[str, Any]:
        """The row as written to ``rows.jsonl`` (``layers=False``: as in ``results.json``)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ROW_KEYS}
        for k in _OPTIONAL_ROW_KEYS:
            value = getattr(self, k)
            if value is not None and (layers or k != "layers"):
                out[k] = list(value) if k == "layers" else value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "result row") -> ResultRow:
        """Read a row.

        Args:
            data: a row as in ``rows.jsonl`` or ``results.json``.
            where: names the row in error messages (``"PATH, line N"``).

        Raises:
            ResultsFolderError: Not a row: not an object, a key missing, or ``t_inference``/``seed``
                not numbers; the message starts with ``where``.
        """
        if not isinstance(data, Mapping) or any(k not in data for k in ROW_KEYS):
            missing = [k for k in ROW_KEYS if not isinstance(data, Mapping) or k not in data]
            raise ResultsFolderError(f"{where}: not a result row (missing {', '.join(missing)}); {_FIX}")
        try:
            float(data["t_inference"])
            int(data["seed"])
        except (TypeError, ValueError):
            raise ResultsFolderError(f"{where}: t_inference/seed are not numbers; {_FIX}") from None
        known = {k: data[k] for k in (*ROW_KEYS, *_OPTIONAL_ROW_KEYS) if k in data}
        if known.get("layers") is not None:
            known["layers"] = tuple(known["layers"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def coerce(cls, row: ResultRow | Mapping[str, Any]) -> ResultRow:
        """``row`` itself, or read from a dict."""
        return row if isinstance(row, ResultRow) else cls.from_dict(row)


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and the half-width of the 95 % CI of the mean over ``n`` chip instances."""

    n: int
    mean: float
    std: float
    ci95: float

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": self.ci95}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stat:
        nan = float("nan")
        return cls(int(data.get("n", 0)), data.get("mean", nan), data.get("std", nan), data.get("ci95", nan))


@dataclass(frozen=True)
class SummaryEntry:
    """The rows of one (model, device, method, t_inference) over chip instances.

    In ``results.json`` each metric is flat: ``ppl``, ``ppl_std``, ``ppl_ci95``; ``n`` is the number
    of chip instances with a perplexity; downstream tasks are ``tasks: {"task/metric": {n, mean, std, ci95}}``.
    """

    model: str
    device: str
    method: str
    t_inference: float
    seeds: tuple[int, ...]
    n: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    """Per metric of :data:`METRICS` (in that order), then of :data:`CONTROL_METRICS` where the rows
    carry them; ``metrics[m].n`` counts its finite values."""
    tasks: dict[str, Stat] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> tuple[str, str, float]:
        """``(model, device, t_inference)``: the table this entry belongs to."""
        return (self.model, self.device, float(self.t_inference))

    def mean(self, metric: str) -> float | None:
        stat = self.metrics.get(metric)
        return None if stat is None else stat.mean

    def std(self, metric: str) -> float | None:
        stat = self.metrics.get(metric)
        return None if stat is None else stat.std

    def ci95(self, metric: str) -> float | None:
        stat = self.metrics.get(metric)
        return None if stat is None else stat.ci95

    def to_dict(self) -> dict[str, Any]:
        """The entry as in ``results.json``."""
        out: dict[str, Any] = {"model": self.model, "device": self.device, "method": self.method,
                               "t_inference": self.t_inference, "seeds": list(self.seeds)}
        for i, (name, stat) in enumerate(self.metrics.items()):
            out.update({name: stat.mean, f"{name}_std": stat.std, f"{name}_ci95": stat.ci95})
            if i == 0:
                out["n"] = self.n
        if "n" not in out:
            out["n"] = self.n
        if self.tasks:
            out["tasks"] = {name: stat.to_dict() for name, stat in self.tasks.items()}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "summary entry") -> SummaryEntry:
        """Read an entry of ``results.json``'s summary.

        Raises:
            ResultsFolderError: A key of :data:`GROUP_KEYS` is missing (the message starts with ``where``).
        """
        missing = [k for k in GROUP_KEYS if not isinstance(data, Mapping) or k not in data]
        if missing:
            raise ResultsFolderError(f"{where}: not a summary entry (missing {', '.join(missing)})")
        seeds = tuple(data.get("seeds") or ())
        metrics = {m: Stat(0, data[m], data.get(f"{m}_std", float("nan")), data.get(f"{m}_ci95", float("nan")))
                   for m in (*METRICS, *CONTROL_METRICS) if m in data}
        taken = {*GROUP_KEYS, "seeds", "n", "tasks", *(f"{m}{s}" for m in metrics for s in ("", "_std", "_ci95"))}
        return cls(data["model"], data["device"], data["method"], data["t_inference"], seeds,
                   int(data.get("n", len(seeds))), metrics,
                   {name: Stat.from_dict(s) for name, s in (data.get("tasks") or {}).items()},
                   {k: v for k, v in data.items() if k not in taken})

    @classmethod
    def coerce(cls, entry: SummaryEntry | Mapping[str, Any]) -> SummaryEntry:
        return entry if isinstance(entry, SummaryEntry) else cls.from_dict(entry)


@dataclass(frozen=True)
class ComparisonResults:
    """What reports, plots and tables read: ``results.json`` (``{"settings", "rows", "summary"}``).

    ``settings`` is the stored :class:`~romer_aihwkit.experiments.CompareSettings` as a dict plus
    what the run measured once per model (``digital_ppl``, ``digital_tasks``, ``hwa_training``).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    rows: tuple[ResultRow, ...] = ()
    summary: tuple[SummaryEntry, ...] = ()
    out_dir: Path | None = field(default=None, compare=False)
    """The results folder (set by :func:`~romer_aihwkit.experiments.run_comparison`; not in ``results.json``)."""

    def __getitem__(self, key: str) -> Any:
        """``results["rows"]`` etc.: the ``results.json`` dict's entry (deprecated; use the attributes)."""
        return deprecated_item(self, "results", key, "run_comparison returns ComparisonResults",
                               "the results.json dict")

    @property
    def methods(self) -> list[str]:
        """The methods in the settings' order."""
        return list(self.settings.get("methods") or [])

    @property
    def stress(self) -> str | None:
        """The stress spec of the digital models (``None`` without stress)."""
        spec = self.settings.get("stress")
        return spec if spec and spec != "none" else None

    def digital_ppl(self, model: str) -> float | None:
        """The digital (unconverted) model's perplexity on the evaluation blocks, if known."""
        value = (self.settings.get("digital_ppl") or {}).get(model)
        if value is not None and _isnum(value):
            return float(value)
        for row in self.rows:
            if row.model == model and row.digital_ppl is not None and _isnum(row.digital_ppl):
                return float(row.digital_ppl)
        return None

    def digital_tasks(self, model: str) -> dict[str, dict[str, Any]]:
        """The digital model's downstream-task results ``{task: {metric: value}}`` (empty if none)."""
        return dict((self.settings.get("digital_tasks") or {}).get(model) or {})

    def groups(self) -> dict[tuple[str, str, float], list[SummaryEntry]]:
        """Summary entries grouped by (model, device, t_inference), methods in the settings' order."""
        order = {m: i for i, m in enumerate(self.methods)}
        groups: dict[tuple[str, str, float], list[SummaryEntry]] = {}
        for entry in self.summary:
            groups.setdefault(entry.group, []).append(entry)
        for entries in groups.values():
            entries.sort(key=lambda e: order.get(e.method, len(order)))
        return dict(sorted(groups.items()))

    def to_dict(self) -> dict[str, Any]:
        """``results.json``'s content (rows without per-layer loads)."""
        return {"settings": dict(self.settings), "rows": [r.to_dict(layers=False) for r in self.rows],
                "summary": [e.to_dict() for e in self.summary]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "results") -> ComparisonResults:
        """Read ``results.json``'s content.

        Raises:
            ResultsFolderError: Not results of a comparison, or a damaged row or entry (named by index).
        """
        if not isinstance(data, Mapping):
            raise ResultsFolderError(f"{where}: not the results of a comparison (expected an object)")
        return cls(dict(data.get("settings") or {}),
                   tuple(ResultRow.from_dict(r, f"{where}, rows[{i}]") for i, r in enumerate(data.get("rows") or [])),
                   tuple(SummaryEntry.from_dict(e, f"{where}, summary[{i}]")
                         for i, e in enumerate(data.get("summary") or [])))

    @classmethod
    def coerce(cls, results: ComparisonResults | Mapping[str, Any]) -> ComparisonResults:
        """``results`` itself, or read from a ``results.json`` dict."""
        return results if isinstance(results, ComparisonResults) else cls.from_dict(results)

    @classmethod
    def load(cls, path: str | Path) -> ComparisonResults:
        """Read a ``results.json`` file.

        Raises:
            ResultsFolderError: The file is not JSON or not the results of a comparison (named in the message).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsFolderError(f"{path}: cannot read the results of a comparison ({exc})") from None
        return cls.from_dict(data, str(path))


class Record(Protocol):
    """A row a per-chip loop appends to ``rows*.jsonl``: its identity and its JSON form."""

    @property
    def key(self) -> tuple: ...

    def to_dict(self) -> dict[str, Any]: ...


RowT = TypeVar("RowT")


@overload
def load_rows(out_dir: str | Path) -> list[ResultRow]: ...


@overload
def load_rows(out_dir: str | Path, parse: Callable[[Any, str], RowT]) -> list[RowT]: ...


def load_rows(out_dir: str | Path, parse: Callable[[Any, str], Any] | None = None) -> list[Any]:
    """Finished rows of every process (``rows*.jsonl``); a torn last line from a kill is ignored.

    Args:
        out_dir: The results folder.
        parse: Reads one decoded line, named ``"PATH, line N"`` in errors (default:
            :meth:`ResultRow.from_dict`, the rows of a comparison).

    Raises:
        ResultsFolderError: A line that is not a row of this package (not JSON, not an object, or
            missing a key); the message names the file and the line.
    """
    read = parse if parse is not None else ResultRow.from_dict
    rows = []
    for path in sorted(Path(out_dir).glob("rows*.jsonl")):
        lines = path.read_bytes().split(b"\n")[:-1]  # after the last newline: nothing, or a line cut by a kill
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                rows.append(read(_decode_row(raw, path, number), f"{path}, line {number}"))
    return rows


def _decode_row(raw: bytes, path: Path, number: int) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ResultsFolderError(f"{path}, line {number}: not a JSON row written by romer-aihwkit; {_FIX}") from None


def rows_of(rows: Iterable[ResultRow | Mapping[str, Any]]) -> list[ResultRow]:
    """Rows as :class:`ResultRow` (dicts are read with :meth:`ResultRow.from_dict`)."""
    return [ResultRow.coerce(r) for r in rows]
