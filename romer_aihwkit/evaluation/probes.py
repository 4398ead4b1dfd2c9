"""Per-layer measurements of a converted MoE model: weight and activation crest factors, outlier
channels, the router's logit error (and its per-token part), router fidelity and load shift.

:func:`weight_crest` reads the clean weights; :class:`LayerProbe` observes router forwards
(:func:`romer_aihwkit.analog.trace.trace_routing`); :func:`layer_statistics` runs one pass with
the probe and the routing accumulator. The diagnosis protocol
(:mod:`romer_aihwkit.experiments.diagnose`) calls them on every chip instance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..analog.trace import experts_of, find_routers, trace_routing
from ..calibration.base import run_batches
from .perplexity import token_nll
from .routing import _accumulator

__all__ = ["OUTLIER_RATIO", "LayerProbe", "layer_statistics", "weight_crest"]

OUTLIER_RATIO = 6.0
"""A hidden channel is an outlier channel when its RMS exceeds this many times the median channel RMS."""


def _row_crest(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().reshape(w.shape[0], -1)
    return w.abs().amax(1) / w.pow(2).mean(1).sqrt().clamp_min(1e-30)


def weight_crest(model: nn.Module) -> list[dict[str, float]]:
    """Per MoE layer: mean and max per-row crest factor (max/RMS) of router, expert gate/up and down rows."""
    out = []
    for router in find_routers(model):
        experts = experts_of(model, router)
        rc = _row_crest(router.weight)
        gu, dn = zip(*(experts.own_weights(e) for e in range(experts.num_experts)))
        gc = torch.cat([_row_crest(w) for w in gu])
        dc = torch.cat([_row_crest(w) for w in dn])
        out.append({"router_weight_crest": float(rc.mean()), "router_weight_crest_max": float(rc.max()),
                    "expert_weight_crest": float(torch.cat([gc, dc]).mean()),
                    "expert_weight_crest_max": float(torch.cat([gc, dc]).max())})
    return out


class LayerProbe:
    """Router-input activation statistics and router logit error per MoE layer (an observer)."""

    def __init__(self, routers: list) -> None:
        self.index = {id(r): i for i, r in enumerate(routers)}
        n = len(routers)
        self.tokens = [0] * n
        self.crest_sum = [0.0] * n
        self.crest_max = [0.0] * n
        self.chan_sq: list[torch.Tensor | None] = [None] * n
        self.err_sq = [0.0] * n
        self.ref_sq = [0.0] * n
        self.moments: list[torch.Tensor | None] = [None] * n  # per expert: n, sum z~, sum z, sum z~^2, sum z~ z, sum z^2, sum (z - z~)^2

    def __call__(self, event) -> None:
        i = self.index[id(event.router)]
        h = event.hidden.float()
        rms = h.pow(2).mean(1).sqrt().clamp_min(1e-30)
        crest = h.abs().amax(1) / rms
        self.tokens[i] += h.shape[0]
        self.crest_sum[i] += float(crest.sum())
        self.crest_max[i] = max(self.crest_max[i], float(crest.max()))
        sq = h.pow(2).sum(0).double().cpu()
        prev_sq = self.chan_sq[i]
        self.chan_sq[i] = sq if prev_sq is None else prev_sq + sq
        noisy, ref = event.noisy_logits.double().cpu(), event.reference_logits.double().cpu()
        self.err_sq[i] += float((noisy - ref).pow(2).sum())
        self.ref_sq[i] += float(ref.pow(2).sum())
        m = torch.stack([torch.full_like(noisy[0], noisy.shape[0]), noisy.sum(0), ref.sum(0), noisy.pow(2).sum(0),
                         (noisy * ref).sum(0), ref.pow(2).sum(0), (ref - noisy).pow(2).sum(0)])
        prev = self.moments[i]
        self.moments[i] = m if prev is None else prev + m

    def result(self, i: int) -> dict[str, float]:
        chan_sq, moments = self.chan_sq[i], self.moments[i]
        if chan_sq is None or moments is None:
            raise RuntimeError(f"no router forward was observed for MoE layer {i}")
        chan_rms = (chan_sq / max(self.tokens[i], 1)).sqrt()
        median = float(chan_rms.median().clamp_min(1e-30))
        n, sn, sr, snn, snr, srr, raw = moments
        var_n = (snn - sn * sn / n).clamp_min(1e-30)
        cov = snr - sn * sr / n
        var_r = srr - sr * sr / n
        residual = (var_r - cov * cov / var_n).clamp_min(0.0)  # error left after the best per-expert affine map
        return {
            "act_crest": self.crest_sum[i] / max(self.tokens[i], 1),
            "act_crest_max": self.crest_max[i],
            "outlier_channels": int((chan_rms > OUTLIER_RATIO * median).sum()),
            "max_channel_ratio": float(chan_rms.max()) / median,
            "router_logit_error": math.sqrt(self.err_sq[i] / max(self.ref_sq[i], 1e-30)),
            "router_error_per_token_share": float(residual.sum() / raw.sum().clamp_min(1e-30)),
        }


def layer_statistics(model: nn.Module, batches, batch_size: int,
                     with_ppl: bool) -> tuple[float | None, list[dict[str, Any]]]:
    """Per MoE layer: the :class:`LayerProbe` statistics, router fidelity, load shift and load CVs
    of one pass over ``batches`` (and the perplexity of that pass when ``with_ppl``)."""
    probe = LayerProbe(find_routers(model))
    acc = _accumulator(model)

    def both(event) -> None:
        probe(event)
        acc(event)

    ppl = None
    with trace_routing(model, both):
        if with_ppl:
            nll, count = token_nll(model, batches, batch_size=batch_size, progress=False)
            ppl = math.exp(nll / count)
        else:
            run_batches(model, batches, batch_size, progress=False)
    layers = []
    for i, layer in enumerate(acc.result().layers):
        load = torch.tensor(layer.load, dtype=torch.float64)
        ref = torch.tensor(layer.reference_load, dtype=torch.float64)
        layers.append({**probe.result(i), "router_fidelity": layer.router_fidelity,
                       "load_shift": float(0.5 * (load - ref).abs().sum()),
                       "load_cv": layer.load_cv, "reference_load_cv": layer.reference_load_cv})
    return ppl, layers
