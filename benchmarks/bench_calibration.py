"""ROMER calibration cost in forward-pass equivalents, and streaming-statistics memory vs tokens.

Plain script (not a test):  python benchmarks/bench_calibration.py [--models NAME ...] [--device pcm]
    [--methods romer smooth router-align input-range-pct best] [--olmoe-1b-7b-layer] [--skip-romer]

* cost: time of ``ra.calibrate(model, blocks, [ra.Romer()])`` divided by the time of one analog
  forward pass over the same blocks (same batch size), both on the same programmed + drifted
  model, median of ``--repeat`` (each calibration starts from a freshly programmed chip instance);
  also without ROMER's super-expert guard (``super_expert_ratio=None``), whose sampled digital pass
  through every expert is the part that grows with the number of experts.
* memory: bytes held by the Romer callback's reservoirs (``RowReservoir.nbytes()``) after
  calibrating on 1x, 4x and 16x the tokens, with ``--capacity`` rows per layer (flat once the
  stream is longer than the capacity; exact quantiles below it).
* method cost (``--methods``): for each method, the wall time of its own steps -- ``smooth``'s search
  and fold, static-range calibration, calibration callbacks (ROMER, router-align) and, for
  ``best``, the whole selection (:func:`~romer_aihwkit.experiments.best.choose_method`, which
  converts and programs every candidate) -- divided by one analog forward over the calibration
  blocks (median of ``--repeat``). Conversion and programming, which every method shares, are
  not counted.
  ``--olmoe-1b-7b-layer`` adds a one-decoder-layer OLMoE model in OLMoE-1B-7B's shapes (hidden
  2048, 64 experts of 1024, top-8; random weights, 1024-token vocabulary): slow and several GB of
  memory, hence optional.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import _common
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None,
                        help="bundled models (default: all; `--models` alone: none, with --olmoe-1b-7b-layer)")
    parser.add_argument("--device", default="pcm")
    parser.add_argument("--blocks", type=int, default=4, help="calibration blocks for the cost measurement")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=1024, help="reservoir rows per layer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench_calibration")
    parser.add_argument("--methods", nargs="*", default=[], help="methods whose calibration cost to measure")
    parser.add_argument("--olmoe-1b-7b-layer", action="store_true",
                        help="also measure the methods on a one-layer model in OLMoE-1B-7B's shapes (slow)")
    parser.add_argument("--skip-romer", action="store_true", help="skip the ROMER cost and memory section")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.methods:
        method_costs(args)
    if args.skip_romer:
        return

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


def olmoe_1b_7b_layer():
    """A one-decoder-layer OLMoE model in OLMoE-1B-7B's shapes, random weights (std 0.02), no tokenizer."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(vocab_size=1024, pad_token_id=1, eos_token_id=2, bos_token_id=None, hidden_size=2048, intermediate_size=1024, num_experts=64,
                         num_experts_per_tok=8, num_hidden_layers=1, num_attention_heads=16, num_key_value_heads=16)
    torch.manual_seed(0)
    model = OlmoeForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model, None


def method_costs(args) -> None:
    """Each method's calibration time in forward equivalents (see the module docstring)."""
    from romer_aihwkit.baselines.input_range import calibrate_static_input_ranges
    from romer_aihwkit.baselines.smooth import smooth_model
    from romer_aihwkit.calibration import calibrate
    from romer_aihwkit.calibration.base import run_batches
    from romer_aihwkit.experiments.best import choose_method
    from romer_aihwkit.experiments.methods import get_method, prepare_model

    models, cfg = _common.models_and_device(args.models, args.device)
    if args.models == []:  # `--models` without names: no bundled model (e.g. only the real-shape layer)
        models = []
    if args.olmoe_1b_7b_layer:
        models = [*models, ("olmoe-1b-7b-layer", olmoe_1b_7b_layer)]
    rows, results = [], []
    for name, factory in models:
        digital, tok = factory()
        vocab = digital.config.vocab_size
        blocks = _common.tokens_for(tok, args.blocks, args.seq_len, vocab)
        t = cfg.t_inference

        def timed(method_name: str, digital=digital, blocks=blocks, t=t) -> tuple[float, str]:
            """Seconds of the method's own steps (selection, model edit, range calibration, callbacks)."""
            method = get_method(method_name)
            seconds, note = 0.0, ""
            if method.candidates:
                start = time.perf_counter()
                method, report = choose_method(digital, cfg, method, blocks, t, batch_size=args.batch_size)
                seconds += time.perf_counter() - start
                note = report["choice"]
            source = digital
            if method.smooth:
                source = copy.deepcopy(digital)
                start = time.perf_counter()
                smooth_model(source, cfg, blocks, args.batch_size)
                seconds += time.perf_counter() - start
                method = dataclasses.replace(method, smooth=False)  # already applied to `source`
            model = prepare_model(source, cfg, method)
            model.program_analog_weights(seed=0, t_inference=t)
            start = time.perf_counter()
            if method.static_input_ranges:
                calibrate_static_input_ranges(model, blocks, args.batch_size, percentile=method.input_percentile)
            callbacks = method.callbacks()
            if callbacks:
                calibrate(model, blocks, callbacks, batch_size=args.batch_size, progress=False)
            seconds += time.perf_counter() - start
            return seconds, note

        model = prepare_model(digital, cfg, "global")
        model.program_analog_weights(seed=0, t_inference=t)
        forwards = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with torch.no_grad():
                run_batches(model, blocks, args.batch_size, False, desc="forward")
            forwards.append(time.perf_counter() - t0)
        forward = statistics.median(forwards)
        del model
        for method_name in args.methods:
            seconds, note = timed(method_name)
            res = {"model": name, "device": cfg.name, "method": method_name, "tokens": int(blocks.numel()),
                   "forward_seconds": forward, "method_seconds": seconds,
                   "forward_equivalents": seconds / forward, "choice": note or None}
            results.append(res)
            rows.append([name, method_name, res["tokens"], f"{forward:.2f}", f"{seconds:.2f}",
                         f"{res['forward_equivalents']:.1f}", note])
    _common.table("Calibration cost of each method (one chip instance)",
                  ["model", "method", "calib tokens", "forward s", "method s", "forward-equivalents", "best's choice"],
                  rows)
    path = _common.write_json(f"{args.out}_methods", {"settings": vars(args), "machine": _common.machine(),
                                                      "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
