"""The one deprecation path of the typed records that replaced dicts (comparison results, diagnosis,
routing statistics, calibration reports): indexing them like the old dict still works, with a warning."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["deprecated_item"]


def deprecated_item(record: Any, name: str, key: str, returns: str, content: str) -> Any:
    """``record[key]`` of a typed record that replaced a dict: warns, then returns ``record.to_dict()[key]``.

    The one deprecation path of the typed records (comparison results, diagnosis, routing statistics,
    calibration reports): ``name`` is how the message calls the record (``results``), ``returns``
    what now returns it (``run_comparison returns ComparisonResults``) and ``content`` what
    ``to_dict()`` is (``the results.json dict``).
    """
    warnings.warn(f'{name}["{key}"] is deprecated: {returns}; use {name}.{key} (typed) or '
                  f"{name}.to_dict()[{key!r}] ({content})", DeprecationWarning, stacklevel=3)
    return record.to_dict()[key]
