"""``router-align``: a per-expert affine correction of each analog router, fitted to keep the digital routing.

EAQuant (arXiv 2506.13329) aligns the router-logit distribution of a quantized MoE with the
full-precision one so that expert selection survives quantization; VSRAQ (arXiv 2606.05688) adds
top-k margin alignment. Here the analog router's noisy logits ``z~`` are mapped per expert
``e`` to ``z^_e = a_e z~_e + b_e`` (the router's existing ``logit_scale`` / ``logit_bias``
buffers, so calibration files and chip states keep working), with ``a, b`` minimising on the
calibration tokens

    KL(p(z_ref) || p(z^)) + hinge,

where ``z_ref = x W^T`` are the digital logits of the same hidden states, ``p`` is the family's
score function (softmax over the experts; for sigmoid scoring, DeepSeek-V3, a Bernoulli KL per
expert) and ``hinge`` is the mean over tokens of ``max(0, max_{j not in S} s_j - min_{i in S} s_i)``
on the selection scores ``s`` with ``S`` the digital top-k (it is zero exactly when the corrected
router selects the digital top-k). Experts masked by an earlier calibration (ROMER's replacement)
are left out of both. The fit starts from the installed correction (identity, or ROMER's
normalization when composed after it) and is kept only if the top-k agreement with the digital
routing on held-out calibration tokens (the last quarter of the sampled tokens) does not drop.

Digital cost: ``2 E`` parameters per MoE layer (scale and bias per expert), reported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.routing import route
from ..analog.trace import RouterEvent
from .base import CalibrationCallback
from .reports import RouterAlignLayer, RouterAlignReport
from .reservoir import RowReservoir

__all__ = ["RouterAlign", "alignment_loss", "topk_agreement"]


def topk_agreement(selected: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean fraction of the reference top-k (``[T, k]``) that ``selected`` (``[T, k]``) also selects."""
    hit = (selected.unsqueeze(-1) == reference.unsqueeze(-2)).any(-1).float().mean(-1)
    return float(hit.mean())


def alignment_loss(router, logits: torch.Tensor, ref_logits: torch.Tensor, ref_selected: torch.Tensor,
                   hinge_weight: float = 1.0) -> torch.Tensor:
    """KL of the family's scores to the digital ones plus the top-k hinge (see the module docstring)."""
    mask = router.expert_mask
    keep = ~mask
    z, zr = logits[:, keep], ref_logits[:, keep]
    if router.spec.scoring == "softmax":
        p_ref = torch.softmax(zr, dim=-1)
        kl = (p_ref * (torch.log_softmax(zr, dim=-1) - torch.log_softmax(z, dim=-1))).sum(-1).mean()
        scores = logits
    else:
        q = torch.sigmoid(zr)
        kl = (q * (nn.functional.logsigmoid(zr) - nn.functional.logsigmoid(z))
              + (1 - q) * (nn.functional.logsigmoid(-zr) - nn.functional.logsigmoid(-z))).sum(-1).mean()
        scores = torch.sigmoid(logits)
        if router.e_score_correction_bias is not None:
            scores = scores + router.e_score_correction_bias
    scores = scores.masked_fill(mask, float("-inf"))
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ref_selected, True) & keep
    low = scores.masked_fill(~chosen, float("inf")).amin(-1)
    high = scores.masked_fill(chosen | mask, float("-inf")).amax(-1)
    gap = (high - low)
    hinge = torch.where(torch.isfinite(gap), gap.clamp_min(0.0), torch.zeros_like(gap)).mean()
    return kl + hinge_weight * hinge


class RouterAlign(CalibrationCallback):
    """The ``router-align`` calibration callback.

    Args:
        capacity: token rows sampled per layer (reservoir).
        steps: optimiser steps (Adam) per layer.
        lr: Adam learning rate.
        holdout: share of the sampled rows held out for the keep-or-revert check.
        seed: seed of the sampling.
        hinge_weight: weight of the top-k hinge next to the KL term (0: KL only).
    """

    name = "router-align"

    def __init__(self, capacity: int = 4096, steps: int = 200, lr: float = 0.05, holdout: float = 0.25,
                 seed: int = 0, hinge_weight: float = 1.0) -> None:
        if capacity < 8 or steps < 1 or not 0.0 < holdout < 1.0 or not lr > 0:
            raise ValueError("RouterAlign: capacity >= 8, steps >= 1, lr > 0 and 0 < holdout < 1 are required")
        self.capacity, self.steps, self.lr, self.holdout, self.seed = int(capacity), int(steps), float(lr), float(holdout), int(seed)
        self.hinge_weight = float(hinge_weight)
        self._routers: list = []
        self._noisy: dict[int, RowReservoir] = {}
        self._hidden: dict[int, RowReservoir] = {}

    def start(self, model: nn.Module, routers: list) -> None:
        self._routers = list(routers)
        # one reservoir over [noisy logits | hidden] rows keeps the pairs together
        self._noisy = {id(r): RowReservoir(self.capacity, r.num_experts + r.hidden_dim, self.seed + r.layer_index)
                       for r in self._routers}

    def observe(self, event: RouterEvent) -> None:
        res = self._noisy.get(id(event.router))
        if res is not None:
            res.add(torch.cat([event.noisy_logits.float(), event.hidden.float()], dim=-1))

    @torch.no_grad()
    def _agreement(self, router, noisy: torch.Tensor, scale, bias, ref_selected: torch.Tensor) -> float:
        _, selected = router.route_logits(noisy * scale + bias)
        return topk_agreement(selected, ref_selected)

    def _fit(self, router, noisy: torch.Tensor, ref: torch.Tensor, ref_sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = router.logit_scale.detach().float().cpu().clone().requires_grad_(True)
        bias = router.logit_bias.detach().float().cpu().clone().requires_grad_(True)
        opt = torch.optim.Adam([scale, bias], lr=self.lr)
        cpu = _CpuRouter(router)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = alignment_loss(cpu, noisy * scale + bias, ref, ref_sel, self.hinge_weight)
            loss.backward()
            opt.step()
        return scale.detach(), bias.detach()

    def finish(self, model: nn.Module) -> RouterAlignReport:
        layers = []
        params = 0
        for router in self._routers:
            rows = self._noisy[id(router)].rows
            e = router.num_experts
            noisy, hidden = rows[:, :e], rows[:, e:]
            cpu = _CpuRouter(router)
            with torch.no_grad():
                ref = nn.functional.linear(hidden, router.weight.detach().float().cpu())
                _, ref_sel = route(router.spec, ref, cpu.e_score_correction_bias, None)
            n_hold = max(1, int(round(rows.shape[0] * self.holdout)))
            fit, hold = slice(0, rows.shape[0] - n_hold), slice(rows.shape[0] - n_hold, rows.shape[0])
            scale0, bias0 = router.logit_scale.detach().float().cpu(), router.logit_bias.detach().float().cpu()
            before = self._agreement(cpu, noisy[hold], scale0, bias0, ref_sel[hold])
            scale, bias = self._fit(router, noisy[fit], ref[fit], ref_sel[fit])
            after = self._agreement(cpu, noisy[hold], scale, bias, ref_sel[hold])
            kept = after >= before and bool(torch.isfinite(scale).all() and torch.isfinite(bias).all())
            if kept:
                router.logit_scale.copy_(scale.to(router.logit_scale))
                router.logit_bias.copy_(bias.to(router.logit_bias))
            with torch.no_grad():
                loss0 = float(alignment_loss(cpu, noisy[hold] * scale0 + bias0, ref[hold], ref_sel[hold]))
                loss1 = float(alignment_loss(cpu, noisy[hold] * scale + bias, ref[hold], ref_sel[hold]))
            params += 2 * e
            layers.append(RouterAlignLayer(router.layer_index, router.name, int(rows.shape[0]), before, after, loss0,
                                           loss1, kept))
        return RouterAlignReport(tuple(layers), params, {"capacity": self.capacity, "steps": self.steps, "lr": self.lr,
                                                         "holdout": self.holdout})


class _CpuRouter:
    """The parts of an :class:`~romer_aihwkit.analog.router.AnalogRouter` the fit reads, on the CPU."""

    def __init__(self, router) -> None:
        self.spec = router.spec
        self.expert_mask = router.expert_mask.detach().cpu()
        bias = router.e_score_correction_bias
        self.e_score_correction_bias = None if bias is None else bias.detach().float().cpu()

    def route_logits(self, logits: torch.Tensor):
        return route(self.spec, logits, self.e_score_correction_bias, self.expert_mask)
