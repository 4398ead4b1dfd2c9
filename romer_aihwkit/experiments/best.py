"""``best``: choose the mitigation per model, device and drift time on held-out calibration blocks.

The calibration blocks are split into a fit part (the first three quarters) and a held-out part
(the rest). Every candidate within the digital budget
(:func:`~romer_aihwkit.experiments.methods.digital_parameter_fraction`) is prepared and calibrated
on the fit part, on one selection chip instance (:data:`SELECTION_SEED`, not an evaluation chip
unless a comparison asks for that seed), and scored by its next-token NLL on the held-out blocks;
the lowest wins. Evaluation chips then run the chosen method with the full calibration set. The
choice, every candidate's score and its digital share are returned for the calibration report
and the result rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..measures import token_nll
from .methods import Method, apply_method, digital_parameter_fraction, get_method, prepare_model

__all__ = ["SELECTION_SEED", "choose_method"]

SELECTION_SEED = 1_000_003
"""The chip instance the candidates are compared on."""


def choose_method(digital_model: nn.Module, device_config, method: str | Method, calib_batches: torch.Tensor,
                  t_inference: float, batch_size: int = 8, holdout_fraction: float = 0.25) -> tuple[Method, dict[str, Any]]:
    """Resolve a selection method (``best``) to one of its candidates.

    Args:
        digital_model: The digital model (stressed if the comparison is), not modified.
        device_config: The device.
        method: A method with ``candidates``.
        calib_batches: Calibration token blocks ``[N, L]`` (N >= 2).
        t_inference: Drift time of the selection chip.
        batch_size: Rows per forward.
        holdout_fraction: Share of the blocks held out for the choice.

    Returns:
        ``(chosen method, selection report)``; the report holds ``choice``, ``holdout_nll`` and
        ``trials`` (per candidate: ``holdout_nll``, ``digital_fraction``, or why it was skipped).

    Raises:
        InputError: not a selection method, fewer than 2 calibration blocks, or no candidate within budget.
    """

    method = get_method(method)
    if not method.candidates:
        raise InputError(f"method {method.name!r} has no candidates to choose from")
    blocks = torch.as_tensor(calib_batches)
    if blocks.dim() != 2 or blocks.shape[0] < 2:
        raise InputError(f"method {method.name!r} needs at least 2 calibration blocks (one held out)")
    n_hold = min(blocks.shape[0] - 1, max(1, round(blocks.shape[0] * holdout_fraction)))
    fit, held = blocks[:-n_hold], blocks[-n_hold:]
    trials: list[dict[str, Any]] = []
    best: tuple[float, Method] | None = None
    for name in method.candidates:
        cand = get_method(name)
        cost = digital_parameter_fraction(digital_model, cand)
        trial: dict[str, Any] = {"method": name, "digital_fraction": cost["fraction"]}
        if method.digital_budget is not None and cost["fraction"] > method.digital_budget:
            trial["skipped"] = f"keeps {cost['fraction']:.2%} of the MoE parameters digital > {method.digital_budget:.2%}"
            trials.append(trial)
            continue
        model = prepare_model(digital_model, device_config, cand, calib_batches=fit, batch_size=batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SELECTION_SEED)
            apply_method(model, cand, SELECTION_SEED, t_inference, fit if cand.needs_calibration_data else None,
                         batch_size=batch_size)
            nll, count = token_nll(model, held, batch_size=batch_size, progress=False)
        del model
        trial["holdout_nll"] = nll / count
        trials.append(trial)
        if math.isfinite(trial["holdout_nll"]) and (best is None or trial["holdout_nll"] < best[0]):
            best = (trial["holdout_nll"], cand)
    if best is None:
        raise InputError(f"method {method.name!r}: no candidate within the digital budget gave a finite held-out NLL "
                         f"({trials})")
    report = {"choice": best[1].name, "holdout_nll": best[0], "holdout_blocks": int(n_hold),
              "selection_seed": SELECTION_SEED, "digital_budget": method.digital_budget, "trials": trials}
    return best[1], report
