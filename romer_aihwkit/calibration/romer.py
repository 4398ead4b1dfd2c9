"""ROMER: percentile-based router normalization and expert replacement (defined in docs/romer.md)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..adapters.routing import route
from ..analog.calibration_state import reset_replacements
from ..analog.convert import analog_state
from ..analog.experts import REPLICA_MODES
from ..analog.trace import RouterEvent, experts_of
from ..errors import InputError
from ..measures import layer_metrics
from ..validate import check_seed
from .base import CalibrationCallback
from .reports import ReplicaPair, RomerLayer, RomerReport
from .reservoir import RowReservoir

__all__ = ["Romer", "routing_metrics", "DEFAULT_MAX_MASKED_SHARE"]

DEFAULT_MAX_MASKED_SHARE: float | None = 0.125
"""Default replacement budget of :class:`Romer` (``max_masked_share``); see docs/romer.md."""


def routing_metrics(selected: torch.Tensor, reference: torch.Tensor, num_experts: int) -> dict[str, Any]:
    """Load balance and fidelity of one layer's selections ``[T, k]`` against a reference ``[T, k]``."""
    counts = torch.bincount(selected.reshape(-1), minlength=num_experts).double()
    overlap = (selected.unsqueeze(-1) == reference.unsqueeze(-2)).any(-1).sum(-1).double() / selected.shape[1]
    return {
        "load": (counts / counts.sum()).tolist(),
        **layer_metrics(counts),
        "router_fidelity": float(overlap.mean()),
    }


class Romer(CalibrationCallback):
    """ROMER as a calibration callback.

    Args:
        percentiles: ``(low, mid, high)`` percentiles matched between noisy and reference logits.
        tau: an expert is under-activated when its noisy load (after normalization) is below ``tau / E``.
        replacement: ``"average"`` (hot expert = mean of both replicas), ``"split"`` (tokens
            alternate between them) or ``"none"``.
        normalize: install the per-expert affine logit map.
        capacity: rows of router logits kept per layer for statistics (reservoir sample; memory
            does not grow with calibration tokens, exact quantiles up to this many tokens).
        seed: seed of the reservoir sampling.
        super_expert_ratio: replacement guard. An expert whose largest |output| on the calibration
            hidden states (its digital ``down_proj`` output on a sample of every token, routed or
            not, so a rarely routed expert is measured too) exceeds this many times the layer's
            median expert is a "super expert" (it creates massive activations, Su et al. 2025,
            arXiv 2507.23279) and is never replaced, however cold. ``None`` turns the guard off.
        guard_tokens: hidden-state rows per layer sampled for the guard.
        max_masked_share: replacement budget: the largest share of a layer's routed experts that
            may be masked (``floor(max_masked_share * E)`` experts per layer; the coldest first).
            Masking an expert edits the model (it leaves routing even on a noise-free chip), so
            the cap bounds how much of ROMER's effect can be an edit rather than noise recovery.
            ``None``: no cap (only ``tau`` decides).
    """

    name = "romer"

    def __init__(
        self,
        percentiles: tuple[float, float, float] = (5.0, 50.0, 95.0),
        tau: float = 0.25,
        replacement: str = "average",
        normalize: bool = True,
        capacity: int = 16384,
        seed: int = 0,
        super_expert_ratio: float | None = 10.0,
        guard_tokens: int = 1024,
        max_masked_share: float | None = DEFAULT_MAX_MASKED_SHARE,
    ) -> None:
        for label, value in (("percentiles", percentiles), ("tau", tau), ("super_expert_ratio", super_expert_ratio)):
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise InputError(f"Romer {label} must be finite, got {value!r}")
        for label, value in (("capacity", capacity), ("guard_tokens", guard_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"Romer {label} must be a positive integer, got {value!r}")
        seed = check_seed(seed, "Romer seed")
        if max_masked_share is not None and not 0.0 <= float(max_masked_share) <= 1.0:
            raise ValueError(f"max_masked_share must be in [0, 1] (or None for no cap), got {max_masked_share!r}")
        if super_expert_ratio is not None and not float(super_expert_ratio) > 1.0:
            raise ValueError(f"super_expert_ratio must be > 1 (or None to turn the guard off), got {super_expert_ratio!r}")
        if int(guard_tokens) < 1:
            raise ValueError(f"guard_tokens must be >= 1, got {guard_tokens!r}")
        if len(percentiles) != 3:
            raise ValueError(f"percentiles must be (low, mid, high), got {percentiles!r}")
        lo, mid, hi = (float(p) for p in percentiles)
        if not 0.0 < lo < mid < hi < 100.0:
            raise ValueError(f"percentiles must satisfy 0 < low < mid < high < 100, got {percentiles!r}")
        if not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {tau!r}")
        if replacement not in (*REPLICA_MODES, "none"):
            raise ValueError(f"replacement must be one of {(*REPLICA_MODES, 'none')}, got {replacement!r}")
        if replacement == "none" and not normalize:
            raise ValueError("Romer with normalize=False and replacement='none' would do nothing")
        self.percentiles = (lo, mid, hi)
        self.tau = float(tau)
        self.replacement = replacement
        self.normalize = normalize
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.super_expert_ratio = None if super_expert_ratio is None else float(super_expert_ratio)
        self.guard_tokens = int(guard_tokens)
        self.max_masked_share = None if max_masked_share is None else float(max_masked_share)
        if not normalize:
            self.name = "romer-replace"
        elif replacement == "none":
            self.name = "romer-norm"

    def start(self, model: nn.Module, routers: list) -> None:
        reset_replacements(model, routers)
        self._model = model
        self._routers = routers
        self._reservoirs = [RowReservoir(self.capacity, 2 * r.num_experts, seed=self.seed + i) for i, r in enumerate(routers)]
        self._before: list[dict[str, Any]] = [
            {"counts": torch.zeros(r.num_experts, dtype=torch.float64), "overlap": torch.zeros((), dtype=torch.float64), "tokens": 0}
            for r in routers
        ]
        self._index = {id(r): i for i, r in enumerate(routers)}
        guard = self.super_expert_ratio is not None and self.replacement != "none"
        self._hidden = [RowReservoir(self.guard_tokens, r.hidden_dim, seed=self.seed + 7919 + i) if guard else None
                        for i, r in enumerate(routers)]

    def observe(self, event: RouterEvent) -> None:
        i = self._index[id(event.router)]
        noisy = event.noisy_logits  # finite: the router raises on NaN/inf before observers run
        self._reservoirs[i].add(torch.cat([noisy, event.reference_logits.to(noisy)], dim=1))
        hidden = self._hidden[i]
        if hidden is not None:
            hidden.add(event.hidden)
        stats = self._before[i]
        stats["counts"] += torch.bincount(event.selected.reshape(-1).cpu(), minlength=event.num_experts).double()
        ref = event.reference_selected
        k = event.selected.shape[1]
        stats["overlap"] += ((event.selected.unsqueeze(-1) == ref.unsqueeze(-2)).any(-1).sum().double() / k).cpu()
        stats["tokens"] += event.selected.shape[0]

    def _affine(self, noisy: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.tensor(self.percentiles, dtype=torch.float64) / 100.0
        pn = torch.quantile(noisy.double(), q, dim=0)
        pr = torch.quantile(reference.double(), q, dim=0)
        spread_n, spread_r = pn[2] - pn[0], pr[2] - pr[0]
        scale = torch.where(spread_n.abs() > 1e-12, spread_r / spread_n.where(spread_n.abs() > 1e-12, torch.ones_like(spread_n)), torch.ones_like(spread_n))
        bias = pr[1] - scale * pn[1]
        return scale.float(), bias.float()

    def _pairs(self, load: torch.Tensor, router, analog: list[bool], protected: frozenset[int] = frozenset()
               ) -> list[tuple[int, int]]:
        """(cold, hot) pairs: coldest under-activated experts matched with the hottest experts.

        Experts kept digital (e.g. by the hetero baseline) neither give up their tile nor get a replica;
        ``protected`` experts (super experts) never give up their tile.
        """
        spec = router.spec
        e = spec.num_experts
        threshold = self.tau / e
        cold = [int(i) for i in torch.argsort(load) if load[i] < threshold and analog[int(i)] and int(i) not in protected]
        hot = [int(i) for i in torch.argsort(load, descending=True) if load[i] >= threshold and analog[int(i)]]
        group_size = e // spec.n_group
        min_left = math.ceil(spec.top_k / spec.topk_group) if spec.n_group > 1 else spec.top_k
        if spec.n_group > 1 and spec.group_score == "top2_sum":
            # a group is scored by the sum of its two best experts: with one unmasked expert left its
            # score is -inf and that expert could never be selected
            min_left = max(min_left, min(2, group_size))
        unmasked = [group_size] * spec.n_group
        budget = e if self.max_masked_share is None else math.floor(self.max_masked_share * e + 1e-9)
        pairs: list[tuple[int, int]] = []
        for c in cold:
            if len(pairs) == len(hot) or len(pairs) >= budget:
                break
            g = c // group_size
            if unmasked[g] - 1 < (min_left if spec.n_group > 1 else 0) or sum(unmasked) - 1 < spec.top_k:
                continue  # masking it would leave too few experts to route to
            unmasked[g] -= 1
            pairs.append((c, hot[len(pairs)]))
        return pairs

    @torch.no_grad()
    def _super_experts(self, model: nn.Module, router, hidden: RowReservoir | None) -> tuple[list[float], list[dict[str, Any]]]:
        """Per expert: max |digital output| on the sampled calibration hidden states; and the super experts.

        Every expert runs on every sampled token (routed or not), with its own digital weights, so
        the statistic does not depend on the chip instance nor on how often the expert is routed.
        """
        if hidden is None or hidden.rows.shape[0] == 0:
            return [], []
        experts = experts_of(model, router)
        x = hidden.rows
        peaks = []
        for e in range(experts.num_experts):
            gate_up, down = (w.detach().float().cpu() for w in experts.own_weights(e))
            h = x @ gate_up.T
            if experts.has_gate:
                g, u = h.chunk(2, dim=-1)
                h = experts.act_fn(g) * u
            else:
                h = experts.act_fn(h)
            peaks.append(float((h @ down.T).abs().max()))
        median = float(torch.tensor(peaks).median().clamp_min(1e-30))
        ratio = self.super_expert_ratio
        assert ratio is not None  # the guard runs only with a ratio
        supers = [{"expert": e, "max_abs_output": p, "ratio_to_median": p / median}
                  for e, p in enumerate(peaks) if p > ratio * median]
        return peaks, supers

    @torch.no_grad()
    def finish(self, model: nn.Module) -> RomerReport:
        return self.install(model)

    def install(self, model: nn.Module) -> RomerReport:
        """Compute and install the corrections for the current settings from the collected statistics."""

        state = analog_state(model)
        layers = []
        for i, router in enumerate(self._routers):
            e = router.num_experts
            rows = self._reservoirs[i].rows
            if rows.shape[0] == 0:
                raise RuntimeError(f"MoE layer {i} ({router.name}) saw no tokens during calibration")
            noisy, reference = rows[:, :e], rows[:, e:]
            cbias = None if router.e_score_correction_bias is None else router.e_score_correction_bias.cpu()
            stats = self._before[i]
            before_load = stats["counts"] / stats["counts"].sum()
            _, ref_sel = route(router.spec, reference, cbias)
            before = routing_metrics(route(router.spec, noisy, cbias)[1], ref_sel, e)
            before["router_fidelity_stream"] = float(stats["overlap"] / stats["tokens"])
            before["load"] = before_load.tolist()

            scale, bias = (torch.ones(e), torch.zeros(e))
            if self.normalize:
                scale, bias = self._affine(noisy, reference)
            device = router.logit_scale.device
            router.logit_scale.copy_(scale.to(device))
            router.logit_bias.copy_(bias.to(device))
            corrected = noisy * scale + bias
            _, sel = route(router.spec, corrected, cbias)
            normalized_load = torch.bincount(sel.reshape(-1), minlength=e).double() / sel.numel()

            pairs: list[tuple[int, int]] = []
            max_output, supers = self._super_experts(model, router, self._hidden[i])
            if self.replacement != "none":
                experts = experts_of(model, router)
                pairs = self._pairs(normalized_load, router, experts.analog_mask(), frozenset(s["expert"] for s in supers))
                for cold, hot in pairs:
                    experts.set_replica(hot, cold)
                    router.expert_mask[cold] = True
                    experts.reprogram(cold, state.programmed_seed(), state.t_inference)
                experts.replica_mode = self.replacement
            _, sel_after = route(router.spec, corrected, cbias, router.expert_mask.cpu())
            after = routing_metrics(sel_after, ref_sel, e)
            layers.append(RomerLayer(
                layer=router.layer_index, name=router.name, tokens=int(self._reservoirs[i].seen),
                scale=tuple(scale.tolist()), bias=tuple(bias.tolist()),
                normalized_load=tuple(normalized_load.tolist()), threshold=self.tau / e,
                replaced=tuple(ReplicaPair(c, h) for c, h in pairs), masked_share=len(pairs) / e,
                expert_max_output=tuple(max_output), super_experts=tuple(supers), before=before, after=after))
        summary = {
            key: {
                when: sum(getattr(layer, when)[key] for layer in layers) / len(layers) for when in ("before", "after")
            }
            for key in ("load_cv", "max_load_ratio", "router_fidelity")
        }
        return RomerReport(
            settings={
                "percentiles": list(self.percentiles),
                "tau": self.tau,
                "replacement": self.replacement,
                "normalize": self.normalize,
                "capacity": self.capacity,
                "super_expert_ratio": self.super_expert_ratio,
                "max_masked_share": self.max_masked_share,
            },
            replaced_experts=sum(len(layer.replaced) for layer in layers),
            masked_share=tuple(layer.masked_share or 0.0 for layer in layers),
            super_experts=tuple({"layer": layer.layer, **s} for layer in layers for s in layer.super_experts or ()),
            summary=summary,
            layers=tuple(layers),
        )
