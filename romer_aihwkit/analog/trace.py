"""The one routing-trace mechanism: calibration and evaluation both observe routing through it.

Each :class:`~romer_aihwkit.analog.router.AnalogRouter` hands every forward's routing to the
observers installed with :func:`trace_routing` as a :class:`RouterEvent`. The digital reference
(logits and selection) is computed lazily, only when an observer asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .events import Observer, RouterEvent
from .experts import AnalogExperts
from .router import AnalogRouter

__all__ = ["Observer", "RouterEvent", "experts_of", "find_routers", "trace_routing"]


def find_routers(model: nn.Module) -> list[AnalogRouter]:
    """The analog routers of a converted model, in layer order."""
    return [m for m in model.modules() if isinstance(m, AnalogRouter)]


def experts_of(model: nn.Module, router: AnalogRouter) -> AnalogExperts:
    """The :class:`~romer_aihwkit.analog.experts.AnalogExperts` routed by ``router``."""
    block = model.get_submodule(router.name) if router.name else model
    found = [m for m in block.modules() if isinstance(m, AnalogExperts)]
    if len(found) != 1:
        raise RuntimeError(f"cannot find the experts of MoE block {router.name!r}")
    return found[0]


@contextmanager
def trace_routing(model: nn.Module, observer: Observer) -> Iterator[list[AnalogRouter]]:
    """Call ``observer(event)`` for every router forward inside the ``with`` block."""
    routers = find_routers(model)
    if not routers:
        raise ValueError(
            f"{type(model).__name__} has no analog MoE routers: convert it with "
            "romer_aihwkit.convert_to_analog_moe(...) first"
        )
    for router in routers:
        router.observers.append(observer)
    try:
        yield routers
    finally:
        for router in routers:
            router.observers.remove(observer)
