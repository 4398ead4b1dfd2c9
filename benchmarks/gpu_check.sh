#!/usr/bin/env bash
# GPU readiness: the real-shape benchmark and one end-to-end comparison on CUDA in bf16.
# Exits 0 with a message when no CUDA device is visible (nothing to check here).
#   bash benchmarks/gpu_check.sh            # uses .venv/bin/python if present
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible; nothing to check (the CPU benchmarks are benchmarks/bench_*.py)"
  exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), torch.version.cuda)'
# 1. one layer of each real shape, bf16 and fp32, on the GPU
(cd benchmarks && "../$PY" bench_real_shapes.py --torch-device cuda --dtypes bfloat16 float32 \
   --shapes olmoe-1b-7b qwen1.5-moe-a2.7b deepseek-v2-lite mixtral-8x7b --threads 4 --out bench_real_shapes_cuda)
# 1b. the forward under the torch-tile subset (pcm) and AIHWKit's StandardHWATrainingPreset in full
#     (aihwkit-standard: per-MVM read noise, IR drop) against the digital layer, interleaved
(cd benchmarks && "../$PY" bench_real_shapes.py --torch-device cuda --dtypes bfloat16 float32 --shapes olmoe-1b-7b \
   --forward-devices pcm aihwkit-standard --forward-threads 4 --out bench_real_shapes_cuda)
# 2. end to end on the GPU in bf16: convert, program + drift, ROMER, perplexity, over 2 chip instances
"$PY" - <<'PYEOF'
import time, torch
import romer_aihwkit as ra
from romer_aihwkit.experiments import apply_method, prepare_model

model, tok = ra.load_bundled_model("olmoe-tiny", dtype=torch.bfloat16, device="cuda")
calib = ra.text_blocks("bundled", tok, seq_len=128, split="validation", max_blocks=16).cuda()
evals = ra.text_blocks("bundled", tok, seq_len=128, split="test", max_blocks=24).cuda()
print("digital ppl", round(ra.perplexity(model, evals), 3))
for device in ("pcm", "aihwkit-standard"):
    for method in ("none", "global", "romer"):
        for seed in (0, 1):
            t0 = time.perf_counter()
            amodel = prepare_model(model, device, method)
            apply_method(amodel, method, seed=seed, t_inference=3600.0, calib_batches=calib)
            ppl = ra.perplexity(amodel, evals)
            print(f"{device:16s} {method:7s} seed {seed}: ppl {ppl:.3f}  ({time.perf_counter() - t0:.1f} s)")
PYEOF
echo "gpu_check: done"
