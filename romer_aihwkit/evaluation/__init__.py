"""Evaluation: perplexity, routing statistics, the Monte-Carlo comparison runner."""

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

__all__ = [
    "CompareSettings",
    "ResultsExistError",
    "RoutingAccumulator",
    "chip_instances",
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
