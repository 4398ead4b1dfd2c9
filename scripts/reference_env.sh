#!/usr/bin/env bash
# The reference environment: AIHWKit's C++ tiles (InferenceRPUConfig), which simulate the forward
# non-idealities AIHWKit's torch tiles reject (per-MVM weight read noise, IR drop, ...).
#
# aihwkit 1.1.0's wheels are built against torch 2.10: with torch 2.9 its rpu_base does not import
# (undefined symbol), with newer torch the C++ forward fails ("weights must be a CPU tensor"). The
# project itself installs a newer torch, so the reference lives in its own venv (.venv-ref): torch
# 2.10.0 + aihwkit 1.1.0 + only what the reference tests need (they import the package from the
# source tree, no editable install, no transformers).
#
#   scripts/reference_env.sh          build (or update) .venv-ref and check that the C++ tiles run
#   scripts/reference_env.sh --test   ... then run the C++-reference tests (pytest -m cxx_reference)
#
# Environment: REF_VENV (default .venv-ref), PYTHON (default python3.11), REF_TORCH_INDEX (a pip
# index URL for torch, e.g. https://download.pytorch.org/whl/cpu for the CPU-only wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REF_VENV:-.venv-ref}
PYTHON=${PYTHON:-python3.11}
PY="$VENV/bin/python"
STAMP="$VENV/.reference-installed"
if [ ! -f "$STAMP" ]; then
  test -x "$PY" || "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install --upgrade pip
  if [ -n "${REF_TORCH_INDEX:-}" ]; then
    "$PY" -m pip install "torch==2.10.0" --index-url "$REF_TORCH_INDEX"
  else
    "$PY" -m pip install "torch==2.10.0"
  fi
  "$PY" -m pip install "torch==2.10.0" "aihwkit==1.1.0" numpy pyyaml safetensors "pytest>=8" "pytest-timeout>=2.3"
  touch "$STAMP"
fi
# refuse loudly (not a silent skip) when the C++ tiles do not run here
PYTHONPATH="$PWD" "$PY" -c "
from romer_aihwkit.devices.mapping import cxx_tiles_available
why = cxx_tiles_available()
if why is not None:
    raise SystemExit(f'AIHWKit C++ tiles do not run in $VENV: {why}')
import torch, aihwkit
print(f'$VENV: torch {torch.__version__}, aihwkit {aihwkit.__version__}, C++ tiles run')
"
if [ "${1:-}" = "--test" ]; then
  log=$(mktemp)
  PYTHONPATH="$PWD" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" -m pytest -m cxx_reference -q -p no:cacheprovider \
    tests/test_cxx_reference.py 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then exit "$status"; fi
  if grep -Eq 'skipped' "$log" || ! grep -Eq '[0-9]+ passed' "$log"; then
    echo "reference tests: some were skipped or none ran" >&2
    exit 1
  fi
fi
