"""What programming and drift do to one tile: the chip-instance physics both engines share.

A chip instance is a function of ``(seed, matrix name, tile position)`` and the clean weights: tile
``(r, c)`` (output tile ``r``, input tile ``c``) of matrix ``name`` draws every random number of its
programming from :func:`~romer_aihwkit.analog.seeds.tile_seed` ``(seed, name, "program", r, c)`` and
of its drift to ``t`` seconds from ``(seed, name, "drift@t", r, c)``. The stacked engine
(:mod:`~romer_aihwkit.analog.stacked`) and the per-matrix AIHWKit engine
(:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`) both call :func:`program_tiles` and only differ
in where they write the result (one ``[M, out, in]`` tensor, or AIHWKit's own tile objects), so the
same seed programs the same chip in both, bit for bit.

Per tile, in AIHWKit's order (``InferenceTileWithPeriphery.program_weights`` / ``drift_weights``):

* **mapping** (``rpu_config.mapping``): the tile's weights divided by their per-row
  (``weight_scaling_columnwise``) or whole-tile abs-max over ``weight_scaling_omega``; the scales
  are applied digitally at the output;
* **clipping** (``rpu_config.clip``): ``FIXED_VALUE`` / ``LAYER_GAUSSIAN``;
* **programming noise** and drift coefficients, then (with a drift time) **drift and accumulated
  read noise**: for ``PCMLikeNoiseModel`` on a single device pair (every PCM preset) the exact
  four-draw implementation :func:`pcm_program` / :func:`pcm_drift`; for every other noise model
  AIHWKit's own object (``apply_programming_noise`` / ``apply_drift_noise``), called on the tile
  alone, so its conductance converter sees the tile's own statistic as in AIHWKit;
* **drift compensation** (global, per column: the two a device config selects): AIHWKit reads each tile
  with one-hot inputs through its noisy periphery after programming and after drift and divides
  the mean absolute outputs. With one-hot inputs the MVM is elementwise, so the read-out is computed
  elementwise -- the same output noise, ADC rounding and bounds -- without the ``in x in x out``
  matmul. Its output noise is drawn from the tile's programming (resp. drift) stream.

Settings this module does not reproduce are named by :func:`program_recipe`; the AIHWKit engine
then programs with AIHWKit's own tile methods (seeded per matrix), and the stacked engine is not
used (conversion falls back).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from . import periphery as _periphery
from .seeds import tile_seed

__all__ = [
    "PcmPhysics", "ProgramRecipe", "TileChip", "program_recipe", "program_tiles", "pcm_program", "pcm_drift",
    "split_sizes",
]


def split_sizes(size: int, max_size: int) -> tuple[int, ...]:
    """AIHWKit's ``TileModuleArray.get_split_sizes``: near-equal pieces of at most ``max_size``."""
    if max_size <= 0:
        return (size,)
    n = (size + max_size - 1) // max_size
    base, extra = divmod(size, n)
    return tuple(base + (i < extra) for i in range(n))


def _bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


# --------------------------------------------------------------------------- exact PCM physics
@dataclass(frozen=True)
class PcmPhysics:
    """``PCMLikeNoiseModel`` on a single device pair with ``g_min = 0``, read from the AIHWKit object."""

    g_max: float
    prog_coeff: tuple[float, ...]
    prog_coeff_g_max_reference: float
    prog_noise_scale: float
    read_noise_scale: float
    drift_scale: float
    t_0: float
    t_read: float

    @classmethod
    def of(cls, noise_model: Any) -> PcmPhysics | None:
        """The physics of ``noise_model`` when it is exactly such a model, else ``None``."""
        from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
        from aihwkit.inference.noise.pcm import PCMLikeNoiseModel

        converter: Any = getattr(noise_model, "g_converter", None)
        if type(noise_model) is not PCMLikeNoiseModel or type(converter) is not SinglePairConductanceConverter:
            return None
        if float(converter.g_min) != 0.0 or float(converter.g_max) != float(noise_model.g_max):
            return None
        if not hasattr(noise_model, "prog_coeff_g_max_reference"):  # AIHWKit leaves it unset when given
            return None
        return cls(
            g_max=float(noise_model.g_max),
            prog_coeff=tuple(float(c) for c in noise_model.prog_coeff),
            prog_coeff_g_max_reference=float(noise_model.prog_coeff_g_max_reference),
            prog_noise_scale=float(noise_model.prog_noise_scale),
            read_noise_scale=float(noise_model.read_noise_scale),
            drift_scale=float(noise_model.drift_scale),
            t_0=float(noise_model.t_0),
            t_read=float(noise_model.t_read),
        )

    def sigma(self, g: torch.Tensor) -> torch.Tensor:
        """Programming-noise std (uS) at target conductances ``g`` (uS): AIHWKit's polynomial
        ``sum_i c_i (g / g_max)^i`` times ``g_max / prog_coeff_g_max_reference x prog_noise_scale``,
        evaluated in Horner form with the constants folded into the coefficients."""
        unit = self.g_max / self.prog_coeff_g_max_reference * self.prog_noise_scale
        coeffs = [c * unit / self.g_max**i for i, c in enumerate(self.prog_coeff)]
        if len(coeffs) == 1:
            return torch.full_like(g, coeffs[0])
        out = g * coeffs[-1]
        for c in reversed(coeffs[1:-1]):
            out.add_(c).mul_(g)
        return out.add_(coeffs[0])


_ZERO_CLIP = 1e-7


@torch.no_grad()
def pcm_program(w: torch.Tensor, pcm: PcmPhysics, with_nu: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Programming noise of ``PCMLikeNoiseModel`` on one tile ``w`` (float32, mapped), in distribution
    exactly AIHWKit's ``apply_programming_noise``; returns ``(programmed weights, nu or None)``.

    A weight is a device pair ``(g+, g-)``: the one of its sign targets ``|w| g_max / max|w|``, the
    other ``0``; each gets ``N(0, sigma(g)^2)`` programming noise, clipped at 0 S (two draws). Drift
    (:func:`pcm_drift`) re-converts the programmed weight, which leaves only the device of the
    programmed weight's sign non-zero, so only that device's drift exponent ``nu`` is drawn (one
    draw, one log): AIHWKit draws both, and the other multiplies 0 S. (Elementwise arithmetic
    only: boolean masks and ``torch.where`` cost as much as a normal draw on CPU.)
    """
    g = w.abs()
    scale = pcm.g_max / max(float(g.amax()), _ZERO_CLIP)  # uS per weight unit
    g.mul_(scale).clamp_(max=pcm.g_max)  # target of the device of w's sign (uS)
    noise = torch.randn((2, *w.shape), dtype=w.dtype, device=w.device)
    sig0 = float(pcm.sigma(torch.zeros(1, dtype=w.dtype))[0])  # std of a device targeted at 0 S
    other = noise[1].mul_(sig0).clamp_(min=0.0)  # the device of the other sign
    prog = torch.addcmul(g, noise[0], pcm.sigma(g), out=noise[0]).clamp_(min=0.0).sub_(other)  # own - other
    nu = None
    if with_nu:
        # the surviving device after re-conversion has the programmed weight's sign: its target was
        # g when that sign is w's own (prog > 0), else 0 S. AIHWKit clips the relative conductance
        # at 1e-7 before the log; every log below -4.88 saturates both clamps below, so the log is
        # taken unclipped and a flipped sign is sent to -inf by min(log, prog * 1e38) (prog == 0:
        # a weight that stays 0 S whatever its nu; 0 < -prog < 5e-38 uS, where this would not
        # saturate, needs a normal draw within 1e-37 of a clamp: probability < 1e-36 per weight).
        log_g = torch.log(g * (1.0 / pcm.g_max))
        log_g = torch.minimum(log_g, prog * 1e38, out=log_g)
        mu = (log_g * -0.0155).add_(0.0244).clamp_(min=0.049, max=0.1)
        sig = log_g.mul_(-0.0125).sub_(0.0059).clamp_(min=0.008, max=0.045)
        nu = mu.addcmul_(torch.randn_like(sig), sig).abs_()
        if pcm.drift_scale != 1.0:  # scaled after the clamps: log_g is -inf for a flipped sign, and -inf * 0 is NaN
            nu.mul_(pcm.drift_scale)
    # back to weights in w's sign (w == 0: the + device is "own", which is symmetric in distribution)
    return prog.mul_(torch.copysign(g.fill_(1.0 / scale), w)), nu


@torch.no_grad()
def pcm_drift(prog: torch.Tensor, nu: torch.Tensor, pcm: PcmPhysics, t_inference: float) -> torch.Tensor:
    """Drift and accumulated 1/f read noise of ``PCMLikeNoiseModel`` to ``t_inference`` s, in
    distribution exactly AIHWKit's ``apply_drift_noise`` (one draw, two exps, one log per weight;
    consumes ``nu``)."""
    g = prog.abs()
    scale = pcm.g_max / max(float(g.amax()), _ZERO_CLIP)
    g.mul_(scale).clamp_(max=pcm.g_max)  # the one non-zero device of each pair (uS)
    t = t_inference + pcm.t_0
    # 1/f read noise std: min(0.0088 / max((g / g_max)^0.65, 1e-3), 0.2) = min(0.0088 (g / g_max)^-0.65, 0.2)
    # (the inner bound gives 8.8 > 0.2), times the time factor; g = 0 gives 0.2 (and 0 S stays 0 S)
    factor = pcm.read_noise_scale * math.sqrt(math.log((t + pcm.t_read) / (2 * pcm.t_read)))
    if t > pcm.t_0:  # drift: g (t / t0)^-nu
        nu = nu.mul_(-math.log(t / pcm.t_0)).exp_()
    if factor > 0.0:
        q = torch.log(g).mul_(-0.65).add_(math.log(0.0088 * factor) + 0.65 * math.log(pcm.g_max)).exp_()
        q.clamp_(max=0.2 * factor).mul_(torch.randn_like(q))  # q n
        if t > pcm.t_0:
            g.mul_(nu)
        g.addcmul_(g, q).clamp_(min=0.0)  # g + |g| q n  (g >= 0; t > 0 always)
    elif t > pcm.t_0:
        g.mul_(nu)
    return torch.copysign(g, prog, out=g).mul_(1.0 / scale)


# --------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class ProgramRecipe:
    """What AIHWKit does to a tile when programming and drifting it, read from a ``TorchInferenceRPUConfig``."""

    io: _periphery.Periphery
    """The periphery (drift-compensation read-outs go through it)."""
    omega: float
    columnwise: bool
    clip: tuple[str, float, float] | None  # (kind, fixed_value, sigma)
    noise_model: Any
    pcm: PcmPhysics | None
    """Set when the noise model is programmed with the exact four-draw implementation."""
    compensation: str | None  # None, "global", "per-column"
    max_in: int
    max_out: int

    def grid(self, out_features: int, in_features: int) -> TileGrid:
        return TileGrid(split_sizes(out_features, self.max_out), split_sizes(in_features, self.max_in))


@dataclass(frozen=True)
class TileGrid:
    """How one ``[out, in]`` matrix is cut into tiles (AIHWKit's ``TileModuleArray`` split)."""

    out_sizes: tuple[int, ...]
    in_sizes: tuple[int, ...]

    @cached_property
    def in_bounds(self) -> list[tuple[int, int]]:
        return _bounds(self.in_sizes)

    @cached_property
    def out_bounds(self) -> list[tuple[int, int]]:
        return _bounds(self.out_sizes)

    @property
    def count(self) -> int:
        return len(self.out_sizes) * len(self.in_sizes)

    def blocks(self) -> list[tuple[int, int, int, int, int, int]]:
        """``(input tile c, output tile r, o0, o1, i0, i1)`` of every tile."""
        return [(c, r, o0, o1, i0, i1) for c, (i0, i1) in enumerate(self.in_bounds)
                for r, (o0, o1) in enumerate(self.out_bounds)]


def program_recipe(rpu_config) -> ProgramRecipe | str:
    """The :class:`ProgramRecipe` of ``rpu_config``, or a string naming the setting not reproduced."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation, PerColumnDriftCompensation
    from aihwkit.simulator.parameters.enums import WeightClipType
    from aihwkit.simulator.tiles.inference import InferenceTile
    from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

    io = _periphery.parse_periphery(rpu_config)
    if isinstance(io, str):
        return io
    # the torch tiles' forward, or the C++ tiles' (InferenceRPUConfig) with their forward non-idealities
    if getattr(rpu_config, "tile_class", TorchInferenceTile) not in (TorchInferenceTile, InferenceTile):
        return f"tile class {rpu_config.tile_class.__name__}"
    if getattr(rpu_config.forward, "out_noise_std", 0.0) > 0:
        return "forward.out_noise_std > 0 (per-column output noise levels)"
    mapping = rpu_config.mapping
    if not mapping.digital_bias:
        return "analog bias (mapping.digital_bias=False)"
    clip = None
    kind = rpu_config.clip.type
    if kind == WeightClipType.FIXED_VALUE:
        clip = ("fixed", float(rpu_config.clip.fixed_value), 0.0)
    elif kind == WeightClipType.LAYER_GAUSSIAN:
        clip = ("gaussian", float(rpu_config.clip.fixed_value), float(rpu_config.clip.sigma))
    elif kind != WeightClipType.NONE:
        return f"clip.type={kind}"
    noise_model = rpu_config.noise_model  # called on one tile at a time: any conductance converter
    comp_obj = rpu_config.drift_compensation
    comp = {
        type(None): None,
        GlobalDriftCompensation: "global",
        PerColumnDriftCompensation: "per-column",
    }.get(type(comp_obj), "unsupported")
    if comp == "unsupported":
        return f"drift compensation {type(comp_obj).__name__}"
    return ProgramRecipe(
        io=io,
        omega=float(mapping.weight_scaling_omega or 0.0),
        columnwise=bool(mapping.weight_scaling_columnwise),
        clip=clip,
        noise_model=noise_model,
        pcm=PcmPhysics.of(noise_model),
        compensation=comp,
        max_in=int(mapping.max_input_size),
        max_out=int(mapping.max_output_size),
    )


# --------------------------------------------------------------------------- one tile
@dataclass
class TileChip:
    """One programmed (and drifted) tile."""

    weight: torch.Tensor
    """``[out_t, in_t]`` float32 conductance-mapped weights (what AIHWKit's ``tile.tile.weight`` holds)."""
    mapping: torch.Tensor
    """``[out_t]`` digital mapping scale of each output row (AIHWKit ``mapping_scales``)."""
    alpha: torch.Tensor | None
    """Drift compensation (AIHWKit ``tile.alpha``): 0-dim (global) or ``[out_t]`` (per column);
    ``None`` without compensation or without drift."""
    baseline: torch.Tensor | None
    """The compensation's read-out after programming (AIHWKit ``drift_baseline``), or ``None``."""


def _map(w: torch.Tensor, r: ProgramRecipe) -> torch.Tensor:
    """AIHWKit's weight scaling + clipping, in place on the tile ``w``; returns its ``[out_t]`` scales."""
    if r.omega > 0:
        if r.columnwise:
            alpha = w.abs().amax(dim=1, keepdim=True) / r.omega
        else:
            alpha = (w.abs().amax() / r.omega).reshape(1, 1)
        alpha = alpha.masked_fill(alpha == 0.0, 1.0)
        w.div_(alpha)
        scales = alpha.reshape(-1).expand(w.shape[0]).contiguous()
    else:
        scales = torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
    if r.clip is not None:
        kind, fixed, sigma = r.clip
        if kind == "fixed":
            bound = fixed
        else:
            bound = float(w.std()) * sigma
            if fixed > 0:
                bound = min(fixed, bound)
        w.clamp_(-bound, bound)
    return scales


def _readout(w: torch.Tensor, r: ProgramRecipe) -> torch.Tensor:
    """AIHWKit's drift-compensation read-out of one tile: 0-dim (global) or ``[out_t]`` (per column).

    AIHWKit sends the identity matrix through the tile's noisy forward (``tile.forward`` with
    ``is_test=True``) and takes ``mean |out|`` over the tile (global) or per output column. With a
    one-hot input row, the MVM output is one weight times the DAC level of a 1: elementwise.
    """
    noisy = not r.io.perfect
    # [out_t, in_t]: output column o for the one-hot input row i (with IR drop, read noise, ...)
    y = _periphery.one_hot_outputs(w, r.io).abs_() if noisy else w.abs()
    value = y.mean(dim=1) if r.compensation == "per-column" else y.mean()
    return value.clamp_(min=1e-4)


def _seed(device: torch.device, seed: int) -> None:
    """Seed the generator ``device``'s draws come from (what ``torch.manual_seed`` does for it,
    without also queueing a lazy seed of every CUDA device, which formats a stack trace per call)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    elif device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()
                                      ].manual_seed(seed)
    else:
        torch.manual_seed(seed)


@torch.no_grad()
def _program_tile(w: torch.Tensor, r: ProgramRecipe, program_seed: int, drift_seed: int | None,
                  t_inference: float | None) -> TileChip:
    """Program (and drift) one tile ``w`` (a float32 copy of its clean weights, consumed)."""
    mapping = _map(w, r)
    drifting = t_inference is not None
    device = w.device
    _seed(device, program_seed)
    nu: torch.Tensor | None = None
    nus: Any = None
    baseline = None
    if r.pcm is not None:
        programmed, nu = pcm_program(w, r.pcm, with_nu=drifting)
    else:
        programmed, nus = r.noise_model.apply_programming_noise(w)
    del w
    if r.compensation in ("global", "per-column"):
        baseline = _readout(programmed, r)
    if not drifting:
        return TileChip(programmed, mapping, None, baseline)
    assert t_inference is not None and drift_seed is not None
    _seed(device, drift_seed)
    if r.pcm is not None:
        assert nu is not None
        drifted = pcm_drift(programmed, nu, r.pcm, float(t_inference))
    else:
        drifted = r.noise_model.apply_drift_noise(programmed, nus, float(t_inference))
    alpha = None if baseline is None else baseline / _readout(drifted, r)
    return TileChip(drifted, mapping, alpha, baseline)


def program_tiles(reference: torch.Tensor, grid: TileGrid, r: ProgramRecipe, seed: int, name: str,
                  t_inference: float | None) -> Iterator[tuple[int, int, int, int, int, int, TileChip]]:
    """Program (and drift to ``t_inference``) every tile of matrix ``name`` for chip instance ``seed``.

    Args:
        reference: the clean ``[out, in]`` weights (any float dtype, any device).
        grid: the tiles.
        r: the recipe.
        seed: the chip instance.
        name: the matrix's name in the model.
        t_inference: seconds of drift after programming, or ``None`` (programmed only).

    Yields:
        ``(input tile c, output tile r, o0, o1, i0, i1, TileChip)`` per tile, in a fixed order; each
        tile's random numbers come from its own seeds, so the order does not change the chip.
    """
    device = reference.device
    purpose = None if t_inference is None else f"drift@{float(t_inference)!r}"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for c, row, o0, o1, i0, i1 in grid.blocks():
            w = reference[o0:o1, i0:i1].to(torch.float32, copy=True)
            drift_seed = None if purpose is None else tile_seed(seed, name, purpose, row, c)
            chip = _program_tile(w, r, tile_seed(seed, name, "program", row, c), drift_seed, t_inference)
            yield c, row, o0, o1, i0, i1, chip
