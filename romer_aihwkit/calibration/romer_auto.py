"""ROMER with its settings chosen on a held-out part of the calibration set.

An improvement beyond the paper (see docs/romer.md): the percentile triple and ``tau`` are
picked per chip instance by held-out next-token loss, so that replacement is only used where it
helps. ``tau = 0`` (no replacement) is always a candidate; so a noisy chip where replacement
costs more than it gains falls back to normalization only. Selection is greedy: percentiles first
(with ``tau = 0``), then ``tau`` with the chosen percentiles.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..measures import token_nll
from .reports import RomerReport
from .romer import Romer, reset_replacements

__all__ = ["RomerAuto"]


class RomerAuto(Romer):
    """:class:`Romer` whose percentiles and ``tau`` are chosen on held-out calibration blocks.

    Args:
        percentile_candidates: percentile triples to try.
        tau_candidates: values of ``tau`` to try (``0`` = no replacement).
        holdout_fraction: share of the calibration blocks held out for the choice.
        replacement: replica mode when replacing.
    """

    name = "romer-auto"

    def __init__(
        self,
        percentile_candidates: tuple[tuple[float, float, float], ...] = ((5, 50, 95), (1, 50, 99), (10, 50, 90)),
        tau_candidates: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5),
        holdout_fraction: float = 0.25,
        replacement: str = "average",
        capacity: int = 16384,
        seed: int = 0,
    ) -> None:
        if not percentile_candidates or not tau_candidates:
            raise ValueError("give at least one percentile triple and one tau")
        for p in percentile_candidates:
            Romer(percentiles=p)  # validates
        for t in tau_candidates:
            Romer(tau=t)
        super().__init__(percentiles=percentile_candidates[0], tau=tau_candidates[0], replacement=replacement,
                         capacity=capacity, seed=seed)
        self.name = "romer-auto"
        self.percentile_candidates = tuple(tuple(float(x) for x in p) for p in percentile_candidates)
        self.tau_candidates = tuple(float(t) for t in tau_candidates)
        self.holdout_fraction = float(holdout_fraction)

    def _holdout_loss(self, model: nn.Module) -> float:
        nll, count = token_nll(model, self.holdout_batches, progress=False)
        return nll / count

    def _try(self, model: nn.Module, percentiles, tau) -> tuple[float, RomerReport]:
        reset_replacements(model, self._routers)
        self.percentiles, self.tau = percentiles, tau
        report = self.install(model)
        return self._holdout_loss(model), report

    def finish(self, model: nn.Module) -> RomerReport:
        if not self.holdout_batches:
            raise RuntimeError("RomerAuto needs held-out batches: run it through romer_aihwkit.calibrate()")
        trials = []
        best_p, best_loss = None, float("inf")
        for p in self.percentile_candidates:
            loss, _ = self._try(model, p, 0.0)
            trials.append({"percentiles": list(p), "tau": 0.0, "holdout_nll": loss})
            if loss < best_loss:
                best_p, best_loss = p, loss
        if best_p is None:
            raise RuntimeError(f"RomerAuto: every percentile candidate gave a non-finite held-out NLL ({trials})")
        best_tau = 0.0
        for tau in self.tau_candidates:
            if tau == 0.0:
                continue
            loss, _ = self._try(model, best_p, tau)
            trials.append({"percentiles": list(best_p), "tau": tau, "holdout_nll": loss})
            if loss < best_loss:
                best_tau, best_loss = tau, loss
        _, report = self._try(model, best_p, best_tau)
        selection = {"percentiles": list(best_p), "tau": best_tau, "holdout_nll": best_loss,
                     "holdout_batches": len(self.holdout_batches), "trials": trials}
        return dataclasses.replace(report, selection=selection)
