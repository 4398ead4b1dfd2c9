"""Checks of values that cannot mean what they say: non-integer seeds, repeated list entries, non-finite numbers.

One place for these checks, used by the configuration dataclasses (``__post_init__``) and the public
functions that take seeds, so that ``seed=0.7`` or ``lr=inf`` is refused instead of silently
becoming seed 0 or a diverged training run.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable
from typing import Any

from .errors import InputError

__all__ = ["MAX_SEED", "check_distinct", "check_finite_fields", "check_seed", "check_seeds"]

MAX_SEED = 2**31 - 1
"""Largest chip-instance seed."""


def check_seed(value: Any, what: str = "seed") -> int:
    """``value`` as an ``int`` seed in ``[0, MAX_SEED]``.

    Integers of any kind (``int``, NumPy and 0-d integer tensors) are accepted; ``bool``, floats
    (``0.7`` would silently become seed 0) and strings are refused.

    Raises:
        InputError: Not an integer, or out of range (names ``what`` and the value).
    """
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, got the bool {value!r}")
    try:
        seed = operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{what} must be in [0, {MAX_SEED}], got {seed}")
    return seed


def check_seeds(values: Iterable[Any], what: str = "seeds") -> list[int]:
    """Integer seeds, each once (a repeated seed would count one chip instance several times)."""
    seeds = [check_seed(v, f"each of {what}") for v in values]
    check_distinct(seeds, what)
    return seeds


def check_distinct(values: Iterable[Any], what: str) -> None:
    """Refuse a list naming an entry twice (its rows would be computed and counted twice)."""
    seen: set[Any] = set()
    repeated: list[str] = []
    for v in values:
        if v in seen and str(v) not in repeated:
            repeated.append(str(v))
        seen.add(v)
    if repeated:
        raise InputError(f"{what} lists {', '.join(repeated)} more than once; give each once")


def check_finite_fields(obj: Any, what: str) -> None:
    """Refuse NaN or infinite float fields (also inside lists/tuples) of a dataclass instance.

    Raises:
        InputError: Names the class, the field and the value.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise InputError(f"{what} {f.name} must be a finite number, got {item!r}")
