"""Evaluation: perplexity, routing statistics, downstream tasks, statistics over chip instances,
the typed result records, reports and plots.

The comparison protocol that produces result rows is :mod:`romer_aihwkit.experiments`.
"""

from .perplexity import perplexity, token_nll
from .records import ComparisonResults, ResultRow, Stat, SummaryEntry, load_rows
from .routing import (
    LayerRouting,
    RoutingAccumulator,
    RoutingStats,
    layer_metrics,
    perplexity_and_routing,
    routing_stats,
)
from .stats import edit_dominates, mean_std_ci, recovery_beyond_edit, summarize, summarize_rows, with_recovery
from .tasks import evaluate_tasks

__all__ = [
    "ComparisonResults",
    "LayerRouting",
    "ResultRow",
    "RoutingAccumulator",
    "RoutingStats",
    "Stat",
    "SummaryEntry",
    "edit_dominates",
    "evaluate_tasks",
    "layer_metrics",
    "load_rows",
    "mean_std_ci",
    "perplexity",
    "perplexity_and_routing",
    "recovery_beyond_edit",
    "routing_stats",
    "summarize",
    "summarize_rows",
    "token_nll",
    "with_recovery",
]
