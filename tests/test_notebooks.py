"""Execute the tutorial notebooks end to end (each in a fresh kernel of this interpreter).

Each notebook must run without an error and write at least one non-empty PNG into
``ROMER_NOTEBOOK_OUTPUT``. The kernel is the ``ipykernel`` of the Python running the tests (a
kernelspec written to a temp dir and put first on ``JUPYTER_PATH``), so a user-level ``python3``
kernel pointing at another interpreter is never picked up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_convert_an_moe_model.ipynb",
    "02_romer_calibration.ipynb",
    "03_compare_with_aihwkit_baselines.ipynb",
    "04_tasks_and_hwa.ipynb",
]
CELL_TIMEOUT_S = 600


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A ``python3`` kernelspec for ``sys.executable`` and the environment the kernel inherits."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "figures"
    out.mkdir()
    monkeypatch.setenv("ROMER_NOTEBOOK_OUTPUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Tiny tensors: one thread avoids intra-op spin-waits on a busy CPU (same as conftest.py).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return out


def test_notebooks_are_stored_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: clear the outputs before saving"


@pytest.mark.timeout(3 * CELL_TIMEOUT_S)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_env, tmp_path):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError naming the cell if any cell fails

    stem = name.removesuffix(".ipynb")
    pngs = [p for p in kernel_env.glob(f"{stem}-*.png") if p.stat().st_size > 0]
    assert pngs, f"{name} wrote no non-empty {stem}-*.png into ROMER_NOTEBOOK_OUTPUT"
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{p.name} is not a PNG"
