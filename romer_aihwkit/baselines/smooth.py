"""``smooth``: analog-aware, function-preserving channel rescaling of every norm -> MoE group.

SmoothQuant (Xiao et al. 2023), NORA (DATE 2025) and EAQuant (arXiv 2506.13329) move activation
outliers into the weights with one scale per input channel. Here the scale is shared by every
weight that reads the norm's output -- the router, all routed experts' gate/up projections, the
shared experts and the shared-expert gate (as in EAQuant, so one folded gain serves them all) --
and folded into the norm gain and the readers' input columns exactly as
:func:`romer_aihwkit.stress.apply_stress` does in reverse (the same walk,
:func:`~romer_aihwkit.stress.norm_consumers`, and the same fold,
:func:`~romer_aihwkit.stress.scale_norm_group`). The digital model is unchanged up to float
rounding, which :func:`smooth_model` checks.

Choice of the scales. With ``a_j`` the largest ``|x_j|`` of hidden channel ``j`` over the
calibration tokens and ``m_j`` the largest ``|W_ij|`` over all readers' column ``j``, the candidates
are SmoothQuant's family ``s_j(alpha) = a_j^alpha / m_j^(1 - alpha)`` (normalised to geometric
mean 1; the norm output becomes ``x_j / s_j``, the columns ``W_ij * s_j``) on a grid of ``alpha``,
plus no rescaling at all. Each candidate is scored by *this engine's own simulated error*: the
sampled reader matrices are programmed and drifted on a simulated chip instance
(the stacked engine, or AIHWKit's tiles where it does not reproduce the device: the tile split, weight remapping,
programming noise, drift and compensation) and the calibration tokens are run through its
periphery (noise management per token and tile input slice, DAC, output noise, ADC). The score
is the mean over reader kinds (router; each expert projection; shared expert; shared-expert gate)
of the relative output error ``||y_analog - x W^T||^2 / ||x W^T||^2``, averaged over a kind's
sampled experts. Every candidate sees the same simulated chip (common random numbers), and the one
with the lowest score is installed if it beats no rescaling by at least 1 % of its score: a group
where no rescaling helps is left alone.

The rescaling is a property of the model and the device, not of a chip instance: it is computed
once per model and device and then programmed like any weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..analog.engines import engine_for
from ..data import iter_model_batches
from ..devices import load_device_config
from ..errors import InputError
from ..stress import check_function_preserved, norm_consumers, probe_logits, scale_norm_group

__all__ = ["SmoothConfig", "smooth_model", "smoothing_factors", "simulated_error"]


@dataclass(frozen=True)
class SmoothConfig:
    """Settings of :func:`smooth_model`.

    Args:
        alphas: the SmoothQuant migration strengths tried (no rescaling is always tried too).
        max_tokens: calibration tokens per norm used to score candidates (sampled evenly).
        max_experts: matrices per reader kind simulated (evenly spaced experts).
        seed: seed of the simulated chip instance used for scoring.
        max_ratio: the factors are clamped to ``[1/max_ratio, max_ratio]`` around their geometric mean.
        min_improvement: a rescaling is installed only if it lowers the score by at least this
            share of the unrescaled score (differences at float-rounding level change nothing).
    """

    alphas: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    max_tokens: int = 512
    max_experts: int = 4
    seed: int = 12345
    max_ratio: float = 1e3
    min_improvement: float = 0.01

    def __post_init__(self) -> None:
        if not self.alphas or not all(0.0 <= float(a) <= 1.0 for a in self.alphas):
            raise InputError(f"smooth: alphas must be a non-empty list in [0, 1], got {self.alphas!r}")
        if self.max_tokens < 1 or self.max_experts < 1:
            raise InputError("smooth: max_tokens and max_experts must be at least 1")
        if not self.max_ratio > 1.0:
            raise InputError(f"smooth: max_ratio must be > 1, got {self.max_ratio}")


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float,
                      max_ratio: float = 1e3) -> torch.Tensor:
    """SmoothQuant's ``s_j = a_j^alpha / m_j^(1-alpha)``, normalised to geometric mean 1 (float64 ``[H]``).

    Channels where ``a_j`` or ``m_j`` is 0 get ``s_j = 1`` before normalisation. The norm output
    is divided by ``s`` and the readers' columns multiplied by it.
    """
    a = act_absmax.double()
    m = weight_absmax.double()
    ok = (a > 0) & (m > 0)
    log_s = torch.zeros_like(a)
    log_s[ok] = alpha * a[ok].log() - (1.0 - alpha) * m[ok].log()
    log_s = log_s - log_s.mean()
    bound = math.log(max_ratio)
    return log_s.clamp(-bound, bound).exp()


def _kinds(readers: list[tuple[str, torch.Tensor, int]], max_experts: int) -> dict[str, list[torch.Tensor]]:
    """Reader kind (name with expert indices as ``*``) -> sampled ``[out, H]`` float32 matrices."""
    kinds: dict[str, list[torch.Tensor]] = {}
    for name, param, dim in readers:
        kind = re.sub(r"\.\d+\.", ".*.", name)
        if param.dim() == 3:  # fused experts [E, out, H] (dim 2) or [E, H, out] (dim 1)
            mats = [param[e] if dim == 2 else param[e].T for e in range(param.shape[0])]
            kind = f"{kind}[*]"
        else:
            mats = [param]
        kinds.setdefault(kind, []).extend(m.detach().float() for m in mats)
    out = {}
    for kind, mats in kinds.items():
        if len(mats) > max_experts:
            idx = torch.linspace(0, len(mats) - 1, max_experts).round().long().unique().tolist()
            mats = [mats[i] for i in idx]
        out[kind] = mats
    return out


@torch.no_grad()
def simulated_error(weights: list[torch.Tensor], x: torch.Tensor, rpu_config, seed: int,
                    t_inference: float | None) -> float:
    """Mean relative output error of ``weights`` (each ``[out, in]``) on ``x [N, in]`` on a simulated chip.

    Each matrix is programmed (and drifted to ``t_inference``) with chip seed ``seed`` on the
    stacked engine (on AIHWKit's per-matrix tiles for settings the stacked engine does not
    reproduce) and run through the device periphery; the error of matrix ``W`` is
    ``||y - x W^T||^2 / ||x W^T||^2``. The output noise is drawn from ``seed`` too, so two calls
    with the same seed and shapes see the same chip and noise.
    """

    engine = engine_for(rpu_config)
    errors = []
    x = x.float()
    for i, w in enumerate(weights):
        w = w.float()
        ref = x @ w.T
        matrix = engine.matrix(w.clone(), None, "expert", f"smooth-sim.{i}", rpu_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            matrix.program(seed, t_inference)
            y = matrix.forward_fp32(x)
        errors.append(float((y - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30)))
    return sum(errors) / len(errors)


@torch.no_grad()
def _norm_outputs(model: nn.Module, groups: list[dict[str, Any]], calib_batches, batch_size: int,
                  max_tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per group: ``(abs-max per channel over all tokens [H], sampled token rows [<= max_tokens, H])``."""

    seen: list[list[torch.Tensor]] = [[] for _ in groups]
    absmax: list[torch.Tensor | None] = [None for _ in groups]

    def hook(i: int):
        def record(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.detach().reshape(-1, h.shape[-1]).float().cpu()
            a = h.abs().amax(dim=0)
            absmax[i] = a if absmax[i] is None else torch.maximum(absmax[i], a)
            seen[i].append(h)
        return record

    handles = [g["module"].register_forward_hook(hook(i)) for i, g in enumerate(groups)]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in iter_model_batches(model, calib_batches, batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    rows = []
    for i, chunks in enumerate(seen):
        if not chunks or absmax[i] is None:
            raise InputError(f"smooth: {groups[i]['norm']} saw no calibration tokens")
        allrows = torch.cat(chunks)
        if allrows.shape[0] > max_tokens:
            allrows = allrows[torch.linspace(0, allrows.shape[0] - 1, max_tokens).round().long()]
        rows.append(allrows)
    return [a for a in absmax if a is not None], rows


def smooth_model(model: nn.Module, device_config, calib_batches, batch_size: int = 8,
                 config: SmoothConfig | None = None, check: bool = True) -> dict[str, Any]:
    """Rescale every norm -> MoE group of a digital model for ``device_config``, in place.

    Args:
        model: A digital Hugging Face MoE model (before conversion).
        device_config: Device name, path or :class:`~romer_aihwkit.devices.DeviceConfig` the scales are chosen for.
        calib_batches: Calibration token blocks (never the evaluation blocks).
        batch_size: Rows per forward.
        config: Search settings.
        check: Verify that the digital logits did not move beyond float tolerance.

    Returns:
        ``{"groups": [{norm, chosen_alpha (None: left alone), score, baseline_score, scores}],
        "settings", "max_logit_change"}``; also stored as ``model.smooth_report``.

    Raises:
        InputError: A converted model, an already smoothed model, or a check that failed.
    """

    config = config or SmoothConfig()
    if getattr(model, "analog_state", None) is not None:
        raise InputError("smooth: apply it to the digital model before convert_to_analog_moe(...)")
    if getattr(model, "smooth_report", None):
        raise InputError("smooth: this model is already smoothed; load a fresh copy")
    device = load_device_config(device_config)
    rpu_config = device.rpu_config()
    t_inference = device.t_inference
    groups = norm_consumers(model, "moe")
    before = probe_logits(model) if check else None
    act_absmax, rows = _norm_outputs(model, groups, calib_batches, batch_size, config.max_tokens)
    report: dict[str, Any] = {"device": device.name, "settings": asdict(config), "groups": []}
    for g, a, x in zip(groups, act_absmax, rows):
        kinds = _kinds(g["readers"], config.max_experts)
        m = torch.zeros_like(a)
        for _, param, dim in g["readers"]:
            p = param.detach().float().abs()
            other = [d for d in range(p.dim()) if d != dim]
            m = torch.maximum(m, p.amax(dim=other).cpu())

        def score(s: torch.Tensor | None, x: torch.Tensor = x, kinds: dict = kinds) -> float:
            xs = x if s is None else x / s.float()
            return sum(
                simulated_error([w.cpu() if s is None else w.cpu() * s.float() for w in mats], xs, rpu_config,
                                config.seed, t_inference)
                for mats in kinds.values()) / len(kinds)

        baseline = score(None)
        scores: dict[str, float] = {"none": baseline}
        best_alpha: float | None = None
        best_score, best_s = baseline * (1.0 - config.min_improvement) - 1e-9, None
        for alpha in config.alphas:
            s = smoothing_factors(a, m, float(alpha), config.max_ratio)
            value = score(s)
            scores[f"{float(alpha):g}"] = value
            if value < best_score:
                best_alpha, best_score, best_s = float(alpha), value, s
        if best_s is not None:
            scale_norm_group(g, 1.0 / best_s)  # gain / s, readers' columns * s
        report["groups"].append({"norm": g["norm"], "chosen_alpha": best_alpha,
                                 "score": baseline if best_s is None else best_score,
                                 "baseline_score": baseline, "scores": scores,
                                 "reader_kinds": sorted(kinds)})
    report["max_logit_change"] = 0.0
    if check and before is not None:
        report["max_logit_change"] = check_function_preserved(
            model, before, "smooth", "some reader of a smoothed norm was missed; this family's layout is not supported")
    setattr(model, "smooth_report", report)  # noqa: B010 - an attribute HF modules do not declare
    return report
