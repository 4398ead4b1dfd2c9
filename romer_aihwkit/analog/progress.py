"""The progress bar of conversion, programming and drift (one place for its switches)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["progress_bar"]

DELAY_S = 2.0
"""A bar appears only once its loop has run this long: small models and tests stay silent."""


def progress_bar(total: int, desc: str, unit: str, progress: bool = True) -> Any:
    """A ``tqdm`` bar over ``total`` steps (``update(n)`` per step, a context manager).

    Silenced by ``progress=False`` (the library functions' ``progress`` argument, which the CLI sets
    from ``--json``), by tqdm's own ``TQDM_DISABLE=1``, and for loops shorter than :data:`DELAY_S`.
    """
    from tqdm.auto import tqdm

    # tqdm reads TQDM_DISABLE once, when it is imported; read it here at each call
    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
    return tqdm(total=total, desc=desc, unit=unit, delay=DELAY_S, leave=False, dynamic_ncols=True,
                disable=quiet or not progress)
