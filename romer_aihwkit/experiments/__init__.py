"""Experiments: the named comparison methods and every Monte-Carlo protocol.

:mod:`.methods` defines each method (how to convert, what to run per chip instance: ROMER, its
ablations and the baselines) and applies it (:func:`prepare_model`, :func:`apply_method`);
:mod:`.settings` holds what a comparison is asked (:class:`CompareSettings`, frozen and pure) and
resolves it once (:func:`resolve`: devices, drift times, dependencies, input fingerprints);
:mod:`.runner` runs every method on the same chip instances (:func:`run_comparison`) into a
resumable results folder; :mod:`.diagnose` runs the error budget (:func:`diagnose`). Both run on
the per-chip loop of :mod:`.chip_loop` (resume, lock, shards). The rows, summaries and results
they write are the typed records of :mod:`romer_aihwkit.evaluation.records` and :class:`DiagnosisRow`.
"""

from .diagnose import DiagnosisRow, diagnose
from .methods import METHODS, Method, apply_method, get_method, list_methods, prepare_model, register_method
from .runner import (
    CompareSettings,
    ResultsExistError,
    ResultsLockedError,
    chip_instances,
    finished_rows,
    input_fingerprints,
    planned_rows,
    results_folder_lock,
    run_comparison,
    write_results,
)
from .settings import ResolvedSettings, resolve

__all__ = [
    "METHODS",
    "CompareSettings",
    "DiagnosisRow",
    "Method",
    "ResultsExistError",
    "ResultsLockedError",
    "ResolvedSettings",
    "apply_method",
    "chip_instances",
    "diagnose",
    "finished_rows",
    "get_method",
    "input_fingerprints",
    "list_methods",
    "planned_rows",
    "prepare_model",
    "register_method",
    "resolve",
    "results_folder_lock",
    "run_comparison",
    "write_results",
]
