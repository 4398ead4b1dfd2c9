"""Where the clean (digital) weights of programmed analog matrices live.

A programmed chip instance needs its digital reference weights again only to program another
instance, to program a ROMER replica, or to save the digital model; keeping them as a second
in-memory copy would double the memory of the simulation. A :class:`ReferenceStore` holds them in
one of three places:

* ``"memory"``: a clone in memory next to the tiles (fastest re-programming, 2x the weights);
* ``"cpu"``: a copy in CPU memory while the tiles live on an accelerator;
* ``"spill"``: a standard safetensors file per stack in a folder (a temporary one, deleted with the
  store, unless ``directory`` is given), written once at conversion and read back one matrix at a
  time with plain file reads (no memory map, so nothing stays resident in the process).

``"auto"`` picks ``"cpu"`` for weights on an accelerator, ``"memory"`` for small stacks and
``"spill"`` otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from ..errors import InputError

__all__ = ["REFERENCE_MODES", "ReferenceStore", "SPILL_THRESHOLD_BYTES"]

REFERENCE_MODES = ("auto", "memory", "cpu", "spill")
SPILL_THRESHOLD_BYTES = 64 * 2**20
"""Under ``"auto"``, stacks smaller than this stay in memory (CPU models)."""

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


class ReferenceStore:
    """Clean weights of stacks of matrices ``[M, out, in]``, addressed by ``(key, index)``.

    Args:
        mode: one of :data:`REFERENCE_MODES`.
        directory: folder for ``"spill"`` files (default: a temporary folder removed with the store).

    Raises:
        InputError: an unknown mode.
    """

    def __init__(self, mode: str = "auto", directory: str | os.PathLike | None = None) -> None:
        if mode not in REFERENCE_MODES:
            raise InputError(f"reference={mode!r} is not one of {', '.join(REFERENCE_MODES)}")
        self.mode = mode
        self._directory = Path(directory) if directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self._files: dict[str, tuple[Path, int, torch.dtype, tuple[int, int]]] = {}
        self._finalizer: weakref.finalize | None = None

    def __deepcopy__(self, memo) -> ReferenceStore:
        """A store of its own: copies of a converted model never share clean weights (``put`` on one
        must not change the other). Spill files are copied into a new temporary folder."""
        new = ReferenceStore.__new__(ReferenceStore)
        memo[id(self)] = new
        new.mode = self.mode
        new._directory = None
        new._finalizer = None
        new._memory = {key: value.detach().clone() for key, value in self._memory.items()}
        new._files = {}
        for key, (path, header, dtype, shape) in self._files.items():
            target = new._folder() / path.name
            shutil.copyfile(path, target)
            new._files[key] = (target, header, dtype, shape)
        return new

    def placement(self, key: str, weights: torch.Tensor) -> str:
        """Where ``add(key, weights)`` keeps the weights."""
        if self.mode != "auto":
            return self.mode
        if weights.device.type != "cpu":
            return "cpu"
        return "memory" if weights.numel() * weights.element_size() < SPILL_THRESHOLD_BYTES else "spill"

    def add(self, key: str, weights: torch.Tensor) -> None:
        """Store the clean ``weights [M, out, in]`` of stack ``key`` (a copy or a spill file: the
        caller may then overwrite ``weights``)."""
        if weights.dim() != 3:
            raise ValueError(f"reference weights of {key!r} must be [M, out, in], got {tuple(weights.shape)}")
        where = self.placement(key, weights)
        if where == "memory":
            self._memory[key] = weights.detach().clone()
        elif where == "cpu":
            self._memory[key] = weights.detach().to("cpu", copy=True)
        else:
            self._spill(key, weights.detach())

    def get(self, key: str, index: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The clean matrix ``index`` of stack ``key`` (a fresh tensor the caller may modify)."""
        if key in self._memory:
            out = self._memory[key][index]
            return out.to(device, copy=True) if device is not None else out.clone()
        path, header, dtype, (rows, cols) = self._files[key]
        esize = torch.empty((), dtype=dtype).element_size()
        nbytes = rows * cols * esize
        buf = torch.empty(nbytes, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(header + index * nbytes)
            view = memoryview(buf.numpy())  # type: ignore[arg-type]  # numpy arrays are buffers
            if f.readinto(view) != nbytes:
                raise OSError(f"reference file {path} is truncated: was it modified while the model was in use?")
        out = buf.view(dtype).view(rows, cols)
        return out.to(device) if device is not None else out

    def put(self, key: str, index: int, weight: torch.Tensor) -> None:
        """Replace the clean matrix ``index`` of stack ``key``."""
        if key in self._memory:
            self._memory[key][index].copy_(weight)
            return
        path, header, dtype, (rows, cols) = self._files[key]
        data = weight.detach().to("cpu", dtype).contiguous().reshape(rows, cols)
        with open(path, "r+b") as f:
            f.seek(header + index * data.numel() * data.element_size())
            f.write(data.view(torch.uint8).numpy().tobytes())

    def nbytes_in_memory(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    # ------------------------------------------------------------------ spill files
    def _folder(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="romer-aihwkit-reference-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._directory), True)
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    def _spill(self, key: str, weights: torch.Tensor) -> None:
        """Write a standard safetensors file (tensor ``weight``), one matrix at a time, no full copy."""
        if weights.dtype not in _ST_DTYPES:
            raise ValueError(f"cannot spill {weights.dtype} weights of {key!r}")
        m, rows, cols = weights.shape
        nbytes = m * rows * cols * weights.element_size()
        header = {"weight": {"dtype": _ST_DTYPES[weights.dtype], "shape": [m, rows, cols], "data_offsets": [0, nbytes]},
                  "__metadata__": {"key": key, "format": "romer-aihwkit-reference/1"}}
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path = self._folder() / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".safetensors")
        with open(path, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for i in range(m):
                f.write(weights[i].contiguous().cpu().view(torch.uint8).numpy().data)
        self._files[key] = (path, 8 + len(text), weights.dtype, (rows, cols))
