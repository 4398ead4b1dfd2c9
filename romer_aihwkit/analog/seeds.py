"""Seeds of a chip instance: a neutral module shared by both engines and the experiment runner.

A chip instance is one integer ``seed``. Every random draw of programming and drift is made per
*tile* from :func:`tile_seed` ``(seed, matrix name, purpose, tile position)``, so a chip does not
depend on the engine, on the order matrices are programmed in, or on whether drift happens in the
same call as programming. :func:`matrix_seed` seeds per-matrix (or per-run) streams that are not
part of the programmed tiles (forward noise, AIHWKit's own programming of settings the shared
physics does not reproduce).
"""

from __future__ import annotations

import hashlib

__all__ = ["matrix_seed", "tile_seed"]


def _derive(text: str) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def matrix_seed(seed: int, name: str, purpose: str = "program") -> int:
    """A 63-bit seed derived from a chip-instance seed and a matrix name.

    Args:
        seed: The chip instance.
        name: The matrix's name in the model.
        purpose: What the seed is for (``"program"``, ``"drift"``, ...), so streams never coincide.

    Returns:
        A non-negative 63-bit integer.
    """
    return _derive(f"{int(seed)}|{name}|{purpose}")


def tile_seed(seed: int, name: str, purpose: str, row: int, col: int) -> int:
    """The seed of tile ``(row, col)`` (output tile ``row``, input tile ``col``) of matrix ``name``.

    Args:
        seed: The chip instance.
        name: The matrix's name in the model.
        purpose: ``"program"`` or ``"drift@<t_inference>"``.
        row: Output-tile index.
        col: Input-tile index.

    Returns:
        A non-negative 63-bit integer.
    """
    return _derive(f"{int(seed)}|{name}|{purpose}|tile {int(row)},{int(col)}")
