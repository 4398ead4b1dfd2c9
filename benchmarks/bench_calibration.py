"""ROMER calibration cost in forward-pass equivalents, and streaming-statistics memory vs tokens.

Plain script (not a test):  python benchmarks/bench_calibration.py [--models NAME ...] [--device pcm]

* cost: time of ``ra.calibrate(model, blocks, [ra.Romer()])`` divided by the time of one analog
  forward pass over the same blocks (same batch size), both on the same programmed + drifted
  model, median of ``--repeat`` (each calibration starts from a freshly programmed chip instance);
  also without ROMER's super-expert guard (``super_expert_ratio=None``), whose sampled digital pass
  through every expert is the part that grows with the number of experts.
* memory: bytes held by the Romer callback's reservoirs (``RowReservoir.nbytes()``) after
  calibrating on 1x, 4x and 16x the tokens, with ``--capacity`` rows per layer (flat once the
  stream is longer than the capacity; exact quantiles below it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--device", default="pcm")
    parser.add_argument("--blocks", type=int, default=4, help="calibration blocks for the cost measurement")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=1024, help="reservoir rows per layer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench_calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import romer_aihwkit as ra
    from romer_aihwkit.calibration.base import run_batches

    models, cfg = _common.models_and_device(args.models, args.device)
    rows, results = [], []
    for name, factory in models:
        model, tok = factory()
        ra.convert_to_analog_moe(model, cfg)
        all_blocks = _common.tokens_for(tok, 16 * args.blocks, args.seq_len, model.config.vocab_size)
        blocks = all_blocks[: args.blocks]

        fwd, cal, bare = [], [], []
        for rep in range(args.repeat):
            model.program_analog_weights(seed=rep)
            model.drift_analog_weights()
            t0 = time.perf_counter()
            with torch.no_grad():
                run_batches(model, blocks, args.batch_size, False, desc="forward")
            fwd.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ra.calibrate(model, blocks, [ra.Romer(capacity=args.capacity)], batch_size=args.batch_size, progress=False)
            cal.append(time.perf_counter() - t0)
            model.program_analog_weights(seed=rep, t_inference=cfg.t_inference)
            t0 = time.perf_counter()  # without the super-expert guard (every expert's output on sampled tokens)
            ra.calibrate(model, blocks, [ra.Romer(capacity=args.capacity, super_expert_ratio=None)],
                         batch_size=args.batch_size, progress=False)
            bare.append(time.perf_counter() - t0)
        f, c, b = statistics.median(fwd), statistics.median(cal), statistics.median(bare)

        mem = {}
        for mult in (1, 4, 16):
            model.program_analog_weights(seed=0)
            model.drift_analog_weights()
            romer = ra.Romer(capacity=args.capacity)
            ra.calibrate(model, all_blocks[: mult * args.blocks], [romer], batch_size=args.batch_size, progress=False)
            mem[mult] = sum(r.nbytes() for r in romer._reservoirs)
        res = {
            "model": name, "device": cfg.name, "tokens": int(blocks.numel()),
            "forward_seconds": f, "calibrate_seconds": c, "forward_equivalents": c / f,
            "forward_equivalents_without_guard": b / f,
            "reservoir_bytes_by_token_multiple": {str(k): v for k, v in mem.items()},
            "tokens_by_multiple": {str(k): int(k * blocks.numel()) for k in mem},
        }
        results.append(res)
        rows.append([name, cfg.name, res["tokens"], f"{f:.2f}", f"{c:.2f}", f"{c / f:.2f}", f"{b / f:.2f}",
                     " / ".join(f"{mem[k] / 1024:.0f}" for k in (1, 4, 16))])
    _common.table(
        "ROMER calibration cost and statistics memory",
        ["model", "device", "calib tokens", "forward s", "calibrate s", "forward-equivalents", "without guard",
         f"reservoir KiB at 1x/4x/16x tokens (capacity {args.capacity})"],
        rows,
    )
    path = _common.write_json(args.out, {"settings": vars(args), "machine": _common.machine(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
