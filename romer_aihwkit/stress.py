"""Function-preserving stress controls: put real-LLM statistics into a small model, never by default.

Real MoE LLMs have a few hidden channels 20x to >100x larger than the median ("massive
activations", outlier features) and heavy-tailed weight columns; the bundled tiny models have
neither. A stress spec moves scale between an RMSNorm gain and the weight columns that read the
norm's output, which leaves the digital model unchanged (up to float rounding) but changes what an
analog tile sees:

* ``outliers:NxS`` -- N hidden channels of the norm gain are multiplied by S and the same input
  columns of every consumer weight divided by S: the tiles' inputs get N outlier channels (per-token
  abs-max input scaling then spends the DAC range on them), the weights get small columns.
* ``heavy-weights:NxS`` -- the mirror: the gain channels divided by S, the consumer columns
  multiplied by S: weight rows get outlier entries (per-row max/RMS rises, so per-column
  conductance mapping loses resolution on every other weight), the inputs stay plain.

Which norm feeds what, per decoder layer (every supported family is pre-norm):

* ``post_attention_layernorm`` feeds the MLP side (``mlp``; ``block_sparse_moe`` in older
  Mixtral): the router, the routed experts' gate/up (``w1``/``w3``) projections, the shared
  experts' gate/up projections and the shared-expert gate (Qwen2-MoE, DeepSeek-MoE), or a dense
  MLP's gate/up (DeepSeek-V3's first layers). ``down_proj``/``w2`` read the expert's intermediate
  activations and are left alone.
* ``input_layernorm`` feeds attention: ``q_proj``/``k_proj``/``v_proj``, or MLA's ``q_a_proj``
  (``q_proj`` without q-LoRA) and ``kv_a_proj_with_mqa``. ``o_proj``, ``q_b_proj`` and ``kv_b_proj``
  read other activations and are left alone; OLMoE's q/k norms act on the projections' outputs.

Scope suffix: ``@moe`` (default) stresses the norms feeding MoE blocks only; ``@all`` also every
``input_layernorm`` and the norms feeding dense MLPs. Parts combine with ``+``
(``outliers:3x50+heavy-weights:2x10``); each part takes its own channels. Channels are the same in
every layer (as massive activations are in real LLMs), drawn from a fixed permutation (seed 0) and
recorded in the returned report. :func:`apply_stress` checks on a fixed input that the digital
logits did not move beyond float tolerance and raises otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from .adapters import find_adapter
from .errors import InputError
from .validate import check_finite_fields

__all__ = ["STRESS_KINDS", "StressPart", "apply_stress", "check_function_preserved", "norm_consumers", "parse_stress_spec",
           "probe_logits", "scale_norm_group", "stress_label"]

STRESS_KINDS = ("outliers", "heavy-weights")
SCOPES = ("moe", "all")
MAX_SCALE = 1e4
_ATTN_ATTRS = ("self_attn", "attention", "attn")
_MLP_ATTRS = ("mlp", "block_sparse_moe", "feed_forward", "moe")
_MLP_SKIP = ("down_proj", "w2", "c_proj", "dense_4h_to_h")
"""Linear layers inside an MLP side that read intermediate activations, not the norm output."""
_ATTN_SKIP = ("o_proj", "out_proj", "dense", "c_proj", "q_b_proj", "kv_b_proj")
"""Linear layers inside attention that read attention outputs or LoRA ranks, not the norm output."""
_PART = re.compile(r"^(?P<kind>[a-z-]+):(?P<n>\d+)x(?P<s>[0-9.eE+-]+)(?:@(?P<scope>[a-z]+))?$")


@dataclass(frozen=True)
class StressPart:
    """One part of a stress spec: ``kind`` on ``channels`` hidden channels, factor ``scale``, ``scope`` norms."""

    kind: str
    channels: int
    scale: float
    scope: str = "moe"

    def __post_init__(self) -> None:
        check_finite_fields(self, "stress")

    def __str__(self) -> str:
        scope = "" if self.scope == "moe" else f"@{self.scope}"
        return f"{self.kind}:{self.channels}x{self.scale:g}{scope}"


def parse_stress_spec(spec: str | None) -> list[StressPart]:
    """Parse ``"outliers:3x50"``, ``"heavy-weights:2x20@all"``, ``"a+b"``; ``None``/``""``/``"none"`` -> ``[]``.

    Args:
        spec: The stress spec.

    Returns:
        The parts, in order.

    Raises:
        InputError: A malformed part, unknown kind or scope, a channel count < 1 or a scale outside (1, 1e4].
    """
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return []
    parts = []
    for raw in str(spec).replace(" ", "").split("+"):
        m = _PART.match(raw.lower())
        if m is None:
            raise InputError(
                f"stress spec {spec!r}: cannot parse {raw!r}; expected KIND:NxS[@SCOPE] with KIND one of "
                f"{', '.join(STRESS_KINDS)}, N channels, S a scale > 1, SCOPE moe|all (e.g. outliers:3x50)")
        kind, scope = m["kind"], m["scope"] or "moe"
        if kind not in STRESS_KINDS:
            raise InputError(f"stress spec {spec!r}: unknown kind {kind!r}; known: {', '.join(STRESS_KINDS)}")
        if scope not in SCOPES:
            raise InputError(f"stress spec {spec!r}: unknown scope @{scope}; known: @moe (default), @all")
        try:
            scale = float(m["s"])
        except ValueError:
            raise InputError(f"stress spec {spec!r}: scale {m['s']!r} is not a number") from None
        if not (math.isfinite(scale) and 1.0 < scale <= MAX_SCALE):
            raise InputError(f"stress spec {spec!r}: scale must be in (1, {MAX_SCALE:g}], got {m['s']}")
        n = int(m["n"])
        if n < 1:
            raise InputError(f"stress spec {spec!r}: the channel count must be at least 1, got {n}")
        parts.append(StressPart(kind, n, scale, scope))
    return parts


def stress_label(spec: str | None) -> str:
    """The canonical text of a spec for titles and settings (``"none"`` without stress)."""
    parts = parse_stress_spec(spec)
    return "+".join(str(p) for p in parts) if parts else "none"


# ------------------------------------------------------------------ which weights read a norm
def _decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "input_layernorm", None), nn.Module)
            and isinstance(getattr(m, "post_attention_layernorm", None), nn.Module)]


def _first_child(layer: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _is_moe(module: nn.Module) -> bool:
    return any(find_adapter(m) is not None for m in module.modules())


def _readers(module: nn.Module, hidden: int, skip: tuple[str, ...]) -> list[tuple[str, torch.Tensor, int]]:
    """``(name, parameter, input dim)`` of every weight in ``module`` that reads a ``hidden``-wide input."""
    found: list[tuple[str, torch.Tensor, int]] = []
    for name, sub in module.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in skip:
            continue
        if isinstance(sub, nn.Linear):
            if sub.in_features == hidden:
                found.append((f"{name}.weight", sub.weight, 1))
            continue
        for pname in ("gate_up_proj", "up_proj"):  # transformers-5 fused experts
            p = sub._parameters.get(pname)
            if isinstance(p, torch.Tensor) and p.dim() == 3:
                dim = 1 if getattr(sub, "is_transposed", False) else 2
                if p.shape[dim] != hidden:
                    raise InputError(f"stress: fused experts {name}.{pname} {tuple(p.shape)} do not read the "
                                     f"{hidden}-wide hidden state on dim {dim}; this layout is not supported")
                found.append((f"{name}.{pname}", p, dim))
                break
        w = sub._parameters.get("weight")
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] == hidden:  # bare-weight routers
            found.append((f"{name}.weight", w, 1))
    return found


def norm_consumers(model: nn.Module, scope: str = "moe") -> list[dict[str, Any]]:
    """Every stressed norm and the weights that read its output.

    Args:
        model: A digital (unconverted) Hugging Face MoE model.
        scope: ``"moe"`` (norms feeding MoE blocks) or ``"all"`` (also attention and dense-MLP norms).

    Returns:
        One dict per norm: ``norm`` (module name), ``module`` (the norm), ``readers``
        (``[(parameter name, parameter, input dim)]``).

    Raises:
        InputError: No decoder layer with ``input_layernorm``/``post_attention_layernorm``, a norm
            without a 1-D ``weight`` gain, or a norm whose consumer has no reader.
    """
    layers = _decoder_layers(model)
    if not layers:
        raise InputError(f"stress: {type(model).__name__} has no decoder layers with input_layernorm and "
                         "post_attention_layernorm; stress controls support pre-norm decoder LMs only")
    out: list[dict[str, Any]] = []
    for lname, layer in layers:
        pairs: list[tuple[str, tuple[str, nn.Module], tuple[str, ...]]] = []
        mlp = _first_child(layer, _MLP_ATTRS)
        if mlp is not None and (scope == "all" or _is_moe(mlp[1])):
            pairs.append(("post_attention_layernorm", mlp, _MLP_SKIP))
        attn = _first_child(layer, _ATTN_ATTRS)
        if scope == "all" and attn is not None:
            pairs.append(("input_layernorm", attn, _ATTN_SKIP))
        for norm_attr, (cname, consumer), skip in pairs:
            norm = getattr(layer, norm_attr)
            gain = getattr(norm, "weight", None)
            if not isinstance(gain, torch.Tensor) or gain.dim() != 1:
                raise InputError(f"stress: {lname}.{norm_attr} has no 1-D weight (gain) to scale")
            readers = [(f"{lname}.{cname}.{n}" if n else f"{lname}.{cname}", p, d)
                       for n, p, d in _readers(consumer, gain.numel(), skip)]
            if not readers:
                raise InputError(f"stress: found no weight in {lname}.{cname} that reads {lname}.{norm_attr}")
            out.append({"norm": f"{lname}.{norm_attr}", "module": norm, "readers": readers})
    if not out:
        raise InputError(f"stress: {type(model).__name__} has no norm feeding a MoE block (scope @{scope})")
    return out


# ------------------------------------------------------------------ applying it
def _probe(model: nn.Module) -> torch.Tensor:
    embeddings = cast(nn.Embedding, cast(Any, model).get_input_embeddings())
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or embeddings.num_embeddings)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (2, 16), generator=g)
    device = embeddings.weight.device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()
    finally:
        model.train(was)


@torch.no_grad()
def apply_stress(model: nn.Module, spec: str | None, check: bool = True) -> dict[str, Any]:
    """Apply a function-preserving stress spec to a digital model, in place.

    Args:
        model: A digital Hugging Face MoE model, before :func:`~romer_aihwkit.convert_to_analog_moe`.
        spec: E.g. ``"outliers:3x50"`` (see the module docstring); ``None``/``"none"`` does nothing.
        check: Verify on a fixed random input that the logits moved by at most float tolerance
            (1e-3 x max |logit| in float32, 5e-2 in half precision).

    Returns:
        ``{"spec", "parts": [{kind, channels, scale, scope, channel_ids}], "norms": {norm: [readers]},
        "max_logit_change"}``; also stored as ``model.stress_report``.

    Raises:
        InputError: A bad spec, a converted model, more channels than the hidden size, an
            unsupported layout, or a check that failed (the layout was not understood). All or
            nothing: every change is journaled and undone when any part fails, so a refused spec
            leaves the model exactly as it was.
    """
    parts = parse_stress_spec(spec)
    report: dict[str, Any] = {"spec": stress_label(spec), "parts": [], "norms": {}, "max_logit_change": 0.0}
    if not parts:
        return report
    if getattr(model, "analog_state", None) is not None:
        raise InputError("stress: apply it to the digital model before convert_to_analog_moe(...)")
    previous = getattr(model, "stress_report", None)
    if previous:
        raise InputError(f"stress: this model is already stressed ({previous['spec']}); "
                         "load a fresh copy")
    before = _probe(model) if check else None
    journal: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
    """``(tensor, dim, indices, old slice)`` of every change, undone in reverse if any part fails."""
    try:
        _apply_parts(model, spec, parts, report, journal)
        if check and before is not None:
            _check_unchanged(model, before, report)
    except BaseException:
        with torch.no_grad():
            for tensor, dim, index, old in reversed(journal):
                tensor.index_copy_(dim, index, old)
        raise
    setattr(model, "stress_report", report)  # noqa: B010 - an attribute HF modules do not declare
    return report


def _apply_parts(model: nn.Module, spec: str | None, parts: list[StressPart], report: dict[str, Any],
                 journal: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]) -> None:
    """Scale the parts' channels in place, journaling each slice's old values first."""
    hidden = None
    perm = None
    used = 0
    plans = [(part, norm_consumers(model, part.scope)) for part in parts]  # every layout is understood first
    for part, consumers in plans:
        hidden = consumers[0]["module"].weight.numel()
        used += part.channels
        if used > hidden:
            raise InputError(f"stress spec {spec!r}: {used} channels in all, but the hidden size is {hidden}")
    used = 0
    for part, consumers in plans:
        hidden = consumers[0]["module"].weight.numel()
        if perm is None:
            perm = torch.randperm(hidden, generator=torch.Generator().manual_seed(0))
        channels = perm[used : used + part.channels].sort().values
        used += part.channels
        up = part.scale if part.kind == "outliers" else 1.0 / part.scale
        for item in consumers:
            factor = torch.ones(hidden, dtype=torch.float64)
            factor[channels] = up
            scale_norm_group(item, factor, journal)
            names = report["norms"].setdefault(item["norm"], [])
            for name, _, _ in item["readers"]:
                if name not in names:
                    names.append(name)
        report["parts"].append({**asdict(part), "channel_ids": channels.tolist()})


def _check_unchanged(model: nn.Module, before: torch.Tensor, report: dict[str, Any]) -> None:
    """Refuse a stress that moved the logits beyond float tolerance (a reader was missed)."""
    report["max_logit_change"] = check_function_preserved(
        model, before, f"stress {report['spec']!r}",
        "some reader of a stressed norm was missed; this family's layout is not supported by the stress controls")


@torch.no_grad()
def scale_norm_group(item: dict[str, Any], factor: torch.Tensor,
                     journal: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] | None = None) -> None:
    """Multiply a norm's gain by ``factor [H]`` and divide every reader's input columns by it, in place.

    The digital function is unchanged (up to float rounding): the readers see ``x * factor`` through
    weights ``W / factor``. Channels with factor exactly 1 are left bit-identical.

    Args:
        item: One entry of :func:`norm_consumers`.
        factor: Positive, finite per-channel factors.
        journal: If given, ``(tensor, dim, indices, old slice)`` of every change is appended first,
            so a caller can undo it (``tensor.index_copy_(dim, indices, old)`` in reverse order).

    Raises:
        InputError: A factor of the wrong size, or one that is not positive and finite.
    """
    gain = item["module"].weight
    factor = factor.detach().reshape(-1)
    if factor.numel() != gain.numel():
        raise InputError(f"{item['norm']}: {factor.numel()} channel factors for a gain of {gain.numel()} channels")
    if not bool(torch.isfinite(factor).all() and (factor > 0).all()):
        raise InputError(f"{item['norm']}: channel factors must be positive and finite")
    moved = (factor != 1.0).nonzero().reshape(-1)
    if moved.numel() == 0:
        return
    f = factor[moved]
    index = moved.to(gain.device)
    if journal is not None:
        journal.append((gain.data, 0, index, gain.data.index_select(0, index).clone()))
    gain.data[index] *= f.to(gain.device, gain.dtype)
    for _, param, dim in item["readers"]:
        idx = moved.to(param.device)
        shape = [1] * param.dim()
        shape[dim] = -1
        old = param.data.index_select(dim, idx)
        if journal is not None:
            journal.append((param.data, dim, idx, old.clone()))
        param.data.index_copy_(dim, idx, old / f.to(param.device, param.dtype).reshape(shape))


def probe_logits(model: nn.Module) -> torch.Tensor:
    """The model's logits on a fixed random input (for :func:`check_function_preserved`)."""
    return _probe(model)


def check_function_preserved(model: nn.Module, before: torch.Tensor, what: str, hint: str) -> float:
    """The largest change of the probe logits since ``before`` (:func:`probe_logits`); raises beyond float tolerance.

    Tolerance: 1e-3 x max |logit| in float32, 5e-2 in half precision.

    Raises:
        InputError: ``what`` changed the digital logits (``hint`` says why that can happen).
    """
    after = _probe(model)
    change = float((after - before).abs().max())
    size = float(before.abs().max().clamp_min(1.0))
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if not change <= tol * size:
        raise InputError(f"{what} changed {type(model).__name__}'s digital logits by {change:.3g} "
                         f"(max |logit| {size:.3g}): {hint}")
    return change
