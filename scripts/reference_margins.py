"""How close the statistical reference tests run to their bounds, over repeated runs.

AIHWKit's C++ tiles cannot be seeded, so ``tests/test_cxx_reference.py`` draws afresh on every run and
its statistical checks can only be made rare to fail, not impossible. This script runs each of them
``--runs`` times and prints, per check, the range of the mean-square z and the largest |z| seen,
next to the bounds the tests use. Run it after changing a tolerance or a number of draws::

    bash scripts/reference_env.sh              # builds .venv-ref (torch 2.10.0 + aihwkit 1.1.0)
    PYTHONPATH=$PWD .venv-ref/bin/python scripts/reference_margins.py --runs 20
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_cxx_reference as ref  # noqa: E402

_CHECKS = {
    "w_noise pcm_read": lambda: ref.test_weight_read_noise_matches_cxx_and_formula("pcm_read"),
    "w_noise additive_constant": lambda: ref.test_weight_read_noise_matches_cxx_and_formula("additive_constant"),
    "inp_noise": ref.test_input_noise_matches_cxx,
    "StandardHWATrainingPreset": ref.test_standard_preset_forward_matches_cxx,
    "drift read-out": ref.test_standard_preset_drift_readout_matches_cxx,
    "engine='aihwkit' on C++ tiles": ref.test_aihwkit_engine_runs_cxx_tiles_for_the_standard_preset,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    seen: dict[str, list[tuple[int, float, float, float, float]]] = defaultdict(list)
    original = ref._assert_same_distribution

    def recording(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        z_mean, z_std = ref.z_scores(a, b)
        seen[what].append((z_mean.numel(), float(z_mean.square().mean()), float(z_mean.abs().max()),
                           float(z_std.square().mean()), float(z_std.abs().max())))
        original(a, b, what)

    ref._assert_same_distribution = recording
    failures = 0
    for run in range(args.runs):
        for name, check in _CHECKS.items():
            try:
                check()
            except AssertionError as err:
                failures += 1
                print(f"run {run}: {name} FAILED: {err}", flush=True)
    for what, rows in seen.items():
        k = rows[0][0]
        bound = 6 * math.sqrt(2.0 / k)
        print(f"{what} ({k} outputs, {len(rows)} runs): "
              f"mean z^2 {min(r[1] for r in rows):.3f}-{max(r[1] for r in rows):.3f} (1 +- {bound:.3f}), "
              f"max |z| {max(r[2] for r in rows):.2f} (6); "
              f"std z^2 {min(r[3] for r in rows):.3f}-{max(r[3] for r in rows):.3f} (1 +- {bound + 0.3:.3f}), "
              f"max |z| {max(r[4] for r in rows):.2f} (6)")
    print(f"{failures} failed checks")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
