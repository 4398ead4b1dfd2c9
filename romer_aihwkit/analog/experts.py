"""Routed experts on analog tiles, run once per forward on the tokens routed to each expert.

The experts' matrices live in two *banks* (``gate_up`` and ``down``), one matrix per expert, each
an :class:`~romer_aihwkit.analog.bank.AnalogBank` of whichever engine converted the model
(:mod:`romer_aihwkit.analog.engines`), so :class:`AnalogExperts`, ROMER and the evaluation code
do not depend on the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..adapters.base import ExpertLayout
from .bank import AnalogBank, MatrixBank
from .matrix import WeightMatrix

__all__ = ["AnalogExperts", "REPLICA_MODES"]

REPLICA_MODES = ("average", "split")


class AnalogExperts(nn.Module):
    """E experts; expert ``e`` is ``down[e](act(gate(x)) * up(x))`` with ``gate_up[e]`` one matrix.

    Has the forward signature of transformers-5 fused experts
    ``(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``.
    Tokens are gathered per expert (one sort), so each expert's tiles run once per forward.

    Replicas (ROMER expert replacement): ``replica_of[h] = u`` means expert ``u``'s tiles hold a
    second programmed copy of hot expert ``h``. Tokens routed to ``h`` use both copies:
    ``"average"`` runs both and averages, ``"split"`` alternates tokens between them.
    """

    replica_of: torch.Tensor

    def __init__(
        self,
        gate_up: AnalogBank | list[WeightMatrix],
        down: AnalogBank | list[WeightMatrix],
        act_fn: Callable[[torch.Tensor], torch.Tensor],
        has_gate: bool = True,
    ) -> None:
        super().__init__()
        first: AnalogBank = MatrixBank(gate_up) if isinstance(gate_up, list) else gate_up
        second: AnalogBank = MatrixBank(down) if isinstance(down, list) else down
        if len(first) != len(second) or len(first) == 0:
            raise ValueError("need one gate_up and one down matrix per expert")
        self.gate_up = first
        self.down = second
        self.act_fn = act_fn
        self.has_gate = has_gate
        self.num_experts = len(gate_up)
        self.register_buffer("replica_of", torch.full((self.num_experts,), -1, dtype=torch.long))
        self.replica_mode = "average"
        self.layout = ExpertLayout(has_gate=has_gate)
        """How the original model stored these experts (used to write its digital weights back)."""

    def banks(self) -> tuple[AnalogBank, AnalogBank]:
        return self.gate_up, self.down

    def analog_mask(self) -> list[bool]:
        """Per expert: whether it is on analog tiles (hetero experts are digital)."""
        return list(self.gate_up.analog)

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        h = self.gate_up.mvm(e, x)
        if self.has_gate:
            gate, up = h.chunk(2, dim=-1)
            h = self.act_fn(gate) * up
        else:
            h = self.act_fn(h)
        return self.down.mvm(e, h)

    def _run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        u = int(self._replicas.get(e, -1))
        if u < 0:
            return self.expert_forward(e, x)
        if self.replica_mode == "average":
            return 0.5 * (self.expert_forward(e, x) + self.expert_forward(u, x))
        out = torch.empty(x.shape[0], self.down.out_features, dtype=torch.float32, device=x.device)
        out[0::2] = self.expert_forward(e, x[0::2])
        if x.shape[0] > 1:
            out[1::2] = self.expert_forward(u, x[1::2])
        return out

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        k = top_k_index.shape[-1]
        flat = top_k_index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        token_of = order // k
        flat_weights = top_k_weights.reshape(-1)[order]
        self._replicas = {h: u for h, u in enumerate(self.replica_of.tolist()) if u >= 0}
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            tokens = token_of[start : start + n]
            y = self._run(e, hidden_states[tokens])
            out.index_add_(0, tokens, (y * flat_weights[start : start + n, None]).to(out.dtype))
            start += n
        return out

    # ------------------------------------------------------------------ replicas
    def set_replica(self, hot: int, cold: int) -> None:
        """Make expert ``cold``'s tiles a replica of expert ``hot`` (re-program them afterwards)."""
        if hot == cold or self.replica_of[hot] >= 0 or cold in self._replaced():
            raise ValueError(f"cannot replicate expert {hot} onto expert {cold}")
        for bank in self.banks():
            bank.set_source(cold, hot)
        self.replica_of[hot] = cold

    def _replaced(self) -> set[int]:
        return {int(u) for u in self.replica_of.tolist() if u >= 0}

    def reprogram(self, e: int, seed: int, t_inference: float | None) -> None:
        """Program (and drift) expert ``e``'s tiles for chip instance ``seed``, e.g. after a replica change."""
        for bank in self.banks():
            bank.program(seed, None if t_inference is None else float(t_inference), which=[e])

    def own_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``e``'s own digital ``(gate_up, down)`` weights, even while its tiles hold a replica."""
        return self.gate_up.reference(e), self.down.reference(e)

    def clear_replicas(self) -> list[int]:
        """Give every replaced expert its own weights back; returns the experts to re-program."""
        restored = sorted(self._replaced())
        for cold in restored:
            for bank in self.banks():
                bank.set_source(cold, cold)
        self.replica_of.fill_(-1)
        return restored

    # ------------------------------------------------------------------ the digital model
    def digital_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The experts' weights under the original model's parameter names."""
        gate_up, down = zip(*(self.own_weights(e) for e in range(self.num_experts)))
        return self.layout.state_dict(prefix, gate_up, down, self.gate_up.bias, self.down.bias)
