"""Per-matrix seeds of a chip instance: a neutral module shared by the matrix and stacked engines."""

from __future__ import annotations

import hashlib

__all__ = ["matrix_seed"]


def matrix_seed(seed: int, name: str, purpose: str = "program") -> int:
    """A 63-bit seed derived from a chip-instance seed and a matrix name.

    Args:
        seed: The chip instance.
        name: The matrix's name in the model.
        purpose: What the seed is for (``"program"``, ``"drift"``, ...), so streams never coincide.

    Returns:
        A non-negative 63-bit integer.
    """
    digest = hashlib.sha256(f"{int(seed)}|{name}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
