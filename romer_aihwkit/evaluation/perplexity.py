"""Perplexity of a causal LM on fixed token blocks (implemented in :mod:`romer_aihwkit.measures`)."""

from ..measures import perplexity, token_nll

__all__ = ["perplexity", "token_nll"]
