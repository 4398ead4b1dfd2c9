"""Evaluation: perplexity, routing statistics, downstream tasks, the Monte-Carlo comparison runner."""

from .perplexity import perplexity, token_nll
from .routing import RoutingAccumulator, layer_metrics, perplexity_and_routing, routing_stats
from .runner import (
    CompareSettings,
    ResultsExistError,
    chip_instances,
    load_rows,
    planned_rows,
    run_comparison,
    write_results,
)
from .stats import mean_std_ci, summarize_rows
from .tasks import evaluate_tasks

__all__ = [
    "CompareSettings",
    "ResultsExistError",
    "RoutingAccumulator",
    "chip_instances",
    "evaluate_tasks",
    "layer_metrics",
    "planned_rows",
    "load_rows",
    "mean_std_ci",
    "perplexity",
    "perplexity_and_routing",
    "routing_stats",
    "run_comparison",
    "summarize_rows",
    "token_nll",
    "write_results",
]
