"""perplexity(): token-weighted NLL, eval mode, no grad, NaN detection (toy models, no training)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from romer_aihwkit.evaluation.perplexity import perplexity, token_nll

V = 11


class Uniform(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen_training = []
        self.seen_grad = []

    def forward(self, input_ids, use_cache=False):
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V) + self.w)


class Copy(torch.nn.Module):
    """Predicts the next token perfectly (log-prob 0 up to softmax temperature) when it equals the current."""

    def __init__(self, bad_batch=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.calls = 0
        self.bad_batch = bad_batch

    def forward(self, input_ids, use_cache=False):
        logits = torch.nn.functional.one_hot(input_ids, V).float() * 50.0 * self.w
        if self.calls == self.bad_batch:
            logits[0, 0, 0] = float("nan")
        self.calls += 1
        return SimpleNamespace(logits=logits)


def test_uniform_model_has_vocab_perplexity_and_restores_mode():
    m = Uniform()
    m.train()
    blocks = torch.randint(0, V, (5, 7))
    ppl = perplexity(m, blocks, batch_size=2, progress=False)
    assert ppl == pytest.approx(V, rel=1e-5)
    assert m.seen_training == [False] * 3 and m.seen_grad == [False] * 3
    assert m.training  # mode restored


def test_token_weighted_not_mean_of_block_means():
    m = Copy()
    # batch A: 1 block of length 9, all tokens equal -> NLL ~0 for 8 tokens
    a = torch.full((1, 9), 3)
    # batch B: 1 block of length 3 alternating -> every prediction wrong (NLL ~50) for 2 tokens
    b = torch.tensor([[1, 2, 1]])
    nll, n = token_nll(m, [a, b], progress=False)
    assert n == 10
    ppl = perplexity(Copy(), [a, {"input_ids": b}], progress=False)
    assert ppl == pytest.approx(math.exp(nll / 10), rel=1e-6)
    assert ppl == pytest.approx(math.exp(2 * 50.0 / 10), rel=1e-3)  # mean of block means would be exp(25)


def test_nan_logits_raise_naming_batch():
    blocks = torch.randint(0, V, (6, 5))
    with pytest.raises(ValueError, match="batch 1"):
        perplexity(Copy(bad_batch=1), blocks, batch_size=2, progress=False)


def test_empty_and_bad_batches():
    with pytest.raises(ValueError, match="empty"):
        perplexity(Uniform(), [], progress=False)
    with pytest.raises(TypeError):
        perplexity(Uniform(), "text", progress=False)
