"""Router ensemble: several programmed copies of each router tile, their logits averaged.

ROMER's per-expert affine map corrects *systematic* router distortion; it cannot remove noise
that differs from token to token. When outlier channels make the router's error per-token (see
:func:`romer_aihwkit.diagnose`, ``router_error_per_token_share``), the upper bound of any router
fix is the ``digital-router`` baseline. This method stays analog: each router is programmed
``copies`` times on separate tiles (independent programming noise, drift noise and per-MVM output
noise, since every copy has its own matrix name and therefore its own seeds) and the copies'
logits are averaged, so independent noise shrinks by ``sqrt(copies)`` in standard deviation. Copy
0 keeps the original name, so it is the very router tile of the plain model on the same chip
instance. Cost: ``copies`` x the router tiles (a router is ``E x H`` cells; e.g. 64 x 128 per
layer for ``olmoe-64x8``), and ``copies`` router MVMs per token instead of one.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..analog.convert import analog_state
from ..analog.engines import engine_of
from ..analog.matrix import WeightMatrix
from ..analog.trace import find_routers

__all__ = ["EnsembleMatrix", "install_router_ensemble", "router_tiles"]


class EnsembleMatrix(WeightMatrix):
    """``copies`` analog matrices holding the same weights; the forward is their mean.

    The wrapper holds no tile of its own (``is_analog`` is ``False``; its members are the analog
    tiles, so :func:`~romer_aihwkit.analog.analog_summary` counts every copy as a router and the
    wrapper once as a digital entry). ``program``/``drift`` delegate to every copy.

    Args:
        members: The copies (the same role, weights and shape; distinct matrix names).
    """

    is_analog = False

    def __init__(self, members: list[WeightMatrix]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two matrices")
        names = [m.matrix_name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble members need distinct matrix names (their noise seeds), got {names}")
        super().__init__(members[0].role, members[0].matrix_name)
        self.members = nn.ModuleList(members)

    @property
    def copies(self) -> list[WeightMatrix]:
        """The member matrices, typed."""
        return [cast(WeightMatrix, m) for m in self.members]

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The digital weights every copy was programmed from."""
        return self.copies[0].weight

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.copies[0].bias

    @property
    def out_features(self) -> int:
        return self.copies[0].out_features

    @property
    def in_features(self) -> int:
        return self.copies[0].in_features

    def program(self, seed: int, t_inference: float | None = None, lazy: bool = False) -> None:
        for m in self.copies:
            m.program(seed, t_inference, lazy=lazy)

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.copies)

    def materialise(self, done=None) -> None:
        for m in self.copies:
            m.materialise(done)

    def drift(self, t_inference: float, seed: int) -> None:
        for m in self.copies:
            m.drift(t_inference, seed)

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        for m in self.copies:
            m.set_reference(weight, bias)

    def forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        out = self.copies[0].forward_fp32(x)
        for m in self.copies[1:]:
            out = out + m.forward_fp32(x)
        return out / len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fp32(x).to(x.dtype)


def install_router_ensemble(model: nn.Module, copies: int = 4) -> int:
    """Replace each analog router tile of a converted (not yet programmed) model by ``copies`` copies.

    Args:
        model: A model returned by :func:`romer_aihwkit.convert_to_analog_moe` with analog routers.
        copies: Tiles per router (>= 2).

    Returns:
        The number of routers replaced.

    Raises:
        ValueError: ``copies`` < 2, an unconverted model, or a model whose routers are digital.
    """

    if int(copies) < 2:
        raise ValueError(f"a router ensemble needs copies >= 2, got {copies}")
    state = analog_state(model)
    routers = [r for r in find_routers(model) if r.matrix.is_analog]
    if not routers:
        raise ValueError("the model has no analog router to replicate (was it converted with analog_router=False?)")
    for router in routers:
        base = router.matrix
        members = [base]
        for j in range(1, int(copies)):
            members.append(_copy_matrix(base, f"{base.matrix_name}#copy{j}", state))
        router.matrix = EnsembleMatrix(members).to(base.weight.device)
    return len(routers)


def _copy_matrix(base: WeightMatrix, name: str, state) -> WeightMatrix:
    engine = engine_of(state)
    bias = base.bias.detach() if base.bias is not None else None
    return engine.matrix(base.weight.detach().float(), bias, base.role, name,
                         engine.rpu_config_factory(state.device_config)())


def router_tiles(model: nn.Module) -> dict[str, int]:
    """Physical tiles the routers occupy: ``{"routers", "router_matrices", "router_tiles"}``.

    A matrix ``[out, in]`` takes ``ceil(in / max_input_size) x ceil(out / max_output_size)`` tiles
    (0 = no limit) of the model's device config.
    """
    import math


    config = analog_state(model).device_config
    rows, cols = config.max_input_size or 0, config.max_output_size or 0
    matrices = tiles = 0
    routers = find_routers(model)
    for router in routers:
        m = router.matrix
        members = m.copies if isinstance(m, EnsembleMatrix) else [m]
        for member in members:
            if member.is_analog:
                matrices += 1
                tiles += (math.ceil(member.in_features / rows) if rows else 1) * (
                    math.ceil(member.out_features / cols) if cols else 1)
    return {"routers": len(routers), "router_matrices": matrices, "router_tiles": tiles}
