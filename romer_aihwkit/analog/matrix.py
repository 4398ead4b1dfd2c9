"""One weight matrix of the model, held either on AIHWKit analog tiles or digitally.

Every matrix that conversion touches becomes a :class:`WeightMatrix` with a *role* (router,
expert, shared_expert, attention). The analog kind wraps AIHWKit's own ``AnalogLinear`` built from
a ``TorchInferenceRPUConfig``: tile splitting, DAC/ADC, output noise, programming noise, drift and
drift compensation are AIHWKit's. What this class adds is chip-instance bookkeeping: programming
always starts from the digital reference weights, and every random draw is seeded per matrix, so a
chip instance is reproducible from ``(seed, matrix name)`` and independent of module order.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["WeightMatrix", "AnalogMatrix", "DigitalMatrix", "ROLES", "matrix_seed"]

ROLES = ("router", "expert", "shared_expert", "attention")


def matrix_seed(seed: int, name: str, purpose: str = "program") -> int:
    """A 63-bit seed derived from a chip-instance seed and a matrix name."""
    digest = hashlib.sha256(f"{int(seed)}|{name}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class WeightMatrix(nn.Module):
    """Common interface of analog and digital matrices: ``y = x @ W^T (+ b)`` on the last dim."""

    is_analog: bool = False

    def __init__(self, role: str, name: str = "") -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        self.role = role
        self.matrix_name = name

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def program(self, seed: int) -> None:  # noqa: B027 - digital matrices have nothing to program
        """Program the matrix onto its tiles (one chip instance)."""

    def drift(self, t_inference: float, seed: int) -> None:  # noqa: B027
        """Let the programmed conductances drift to ``t_inference`` seconds."""

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Replace the digital weights this matrix represents (must then be re-programmed)."""
        self.weight.data = weight.detach().to(self.weight).clone()
        if bias is not None:
            self.bias.data = bias.detach().to(self.weight).clone()


class DigitalMatrix(WeightMatrix):
    """A matrix kept digital (e.g. a hetero-selected expert or a digital router)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, role: str, name: str = "") -> None:
        super().__init__(role, name)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class AnalogMatrix(WeightMatrix):
    """A matrix on AIHWKit ``TorchInferenceTile`` s (an ``aihwkit.nn.AnalogLinear``)."""

    is_analog = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rpu_config, role: str, name: str = "") -> None:
        super().__init__(role, name)
        from aihwkit.nn import AnalogLinear

        out_features, in_features = weight.shape
        weight = weight.detach().float()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.analog = AnalogLinear(in_features, out_features, bias=False, rpu_config=rpu_config)
        self.analog.eval()
        self.analog.set_weights(weight)
        self.programmed = False
        self.t_inference: float | None = None

    def _tiles(self):
        return list(self.analog.analog_tiles())

    @torch.no_grad()
    def program(self, seed: int) -> None:
        self.analog.set_weights(self.weight.data.float())
        for tile in self._tiles():
            tile.reference_combined_weights = None
            tile.programmed_weights = None
        device = self.weight.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(matrix_seed(seed, self.matrix_name, "program"))
            self.analog.program_analog_weights()
        self.programmed = True
        self.t_inference = 0.0
        self._seed = int(seed)

    @torch.no_grad()
    def drift(self, t_inference: float, seed: int) -> None:
        if not self.programmed:
            raise RuntimeError(
                f"matrix {self.matrix_name or self.role!r} is not programmed: call "
                "program_analog_weights(seed=...) before drift_analog_weights(...)"
            )
        device = self.weight.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(matrix_seed(seed, self.matrix_name, f"drift@{float(t_inference)!r}"))
            self.analog.drift_analog_weights(float(t_inference))
        self.t_inference = float(t_inference)

    def set_reference(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().set_reference(weight, bias)
        self.analog.set_weights(self.weight.data.float())
        for tile in self._tiles():
            tile.reference_combined_weights = None
            tile.programmed_weights = None
        self.programmed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.analog(x.reshape(-1, shape[-1]).float())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def make_matrix(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    role: str,
    name: str,
    rpu_config=None,
    analog: bool = True,
) -> WeightMatrix:
    """An :class:`AnalogMatrix` when ``analog`` (needs ``rpu_config``), else a :class:`DigitalMatrix`."""
    if analog:
        if rpu_config is None:
            raise ValueError("an analog matrix needs an rpu_config")
        return AnalogMatrix(weight, bias, rpu_config, role, name)
    return DigitalMatrix(weight, bias, role, name)
