"""A whole OLMoE-1B-7B-shaped model (random weights, bf16): convert, program + drift, ROMER, evaluate.

Plain script (not a test):
    python benchmarks/bench_full_model.py [--layers 16] [--experts 64] [--dtype bfloat16] [--device pcm]
        [--seq-len 128] [--eval-blocks 4] [--calib-blocks 4] [--two-call] [--threads 1]

The model is ``OlmoeForCausalLM`` with the checkpoint's sizes (hidden 2048, 64 experts of
intermediate 1024, top-8, 16 layers, vocabulary 50,304: 6.92 B parameters, 12.9 GiB in bf16),
built on the meta device and filled with random weights in place (never downloaded). In one run:

* the digital model's bytes and its perplexity pass over ``--eval-blocks`` random token blocks;
* ``convert_to_analog_moe`` (time);
* ``program_analog_weights(seed, t_inference)`` -- or, with ``--two-call``, the documented
  ``program_analog_weights(seed)`` then ``drift_analog_weights(t_inference)`` (time);
* ROMER calibration (``calibrate`` with ``Romer()``) on ``--calib-blocks`` random blocks (time);
* the analog perplexity pass over the evaluation blocks (time, and over the digital pass);
* memory: bytes held by the converted model over the digital model's, the process's peak resident
  memory (sampled every 2 ms) over the digital model's bytes, and that peak as a fraction of the
  machine's memory (``MemTotal``).

The full model needs about 13-14 GiB and, on a shared 2-core machine, well over 15 minutes
(programming alone is minutes per billion converted weights); ``--layers 1`` (or fewer
``--experts``) is a reduced smoke run with the same layer shapes.

Results: ``benchmarks/results/bench_full_model.json`` (``--out`` to rename).
"""

from __future__ import annotations

import argparse
import gc
import time

import _common
import torch
from bench_memory import held_bytes
from bench_real_shapes import PeakRSS, release_free_memory, rss

OLMOE_1B_7B = dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                   num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                   max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None,
                   eos_token_id=50279)


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def build_model(layers: int, experts: int, dtype: torch.dtype):
    """``OlmoeForCausalLM`` of OLMoE-1B-7B's sizes (``layers`` layers, ``experts`` experts), random weights."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(**{**OLMOE_1B_7B, "num_hidden_layers": layers, "num_experts": experts,
                            "num_experts_per_tok": min(8, experts)})
    with torch.device("meta"):
        model = OlmoeForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                for chunk in p.view(-1, p.shape[-1]).split(4096):  # fill in place, no full fp32 copy
                    chunk.copy_(torch.randn(chunk.shape, generator=g).mul_(0.02))
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
    # the rotary frequencies are buffers that to_empty left uninitialised: build that module again
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="pcm")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=4)
    parser.add_argument("--calib-blocks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--two-call", action="store_true", help="program, then drift (the documented two-call flow)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_full_model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import romer_aihwkit as ra

    cfg = ra.load_device_config(args.device)
    release_free_memory()
    start_rss = rss()
    t0 = time.perf_counter()
    model = build_model(args.layers, args.experts, getattr(torch, args.dtype))
    t_build = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    digital_bytes = held_bytes(model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    eval_ids = torch.randint(3, vocab, (args.eval_blocks, args.seq_len), generator=g)
    calib_ids = torch.randint(3, vocab, (args.calib_blocks, args.seq_len), generator=g)
    times: dict[str, float] = {"build_s": t_build}
    with PeakRSS() as digital_peak:
        t0 = time.perf_counter()
        ppl_digital = ra.perplexity(model, eval_ids, batch_size=args.batch_size, progress=False)
        times["digital_eval_s"] = time.perf_counter() - t0
    release_free_memory()
    before = rss()  # the digital model is alive here
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        ra.convert_to_analog_moe(model, cfg)
        times["convert_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.two_call:
            model.program_analog_weights(seed=0)
            model.drift_analog_weights(cfg.t_inference)
        else:
            model.program_analog_weights(seed=0, t_inference=cfg.t_inference)
        times["program_drift_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = ra.calibrate(model, calib_ids, [ra.Romer()], batch_size=args.batch_size, progress=False)
        times["romer_calibrate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ppl_analog = ra.perplexity(model, eval_ids, batch_size=args.batch_size, progress=False)
        times["analog_eval_s"] = time.perf_counter() - t0
    gc.collect()
    held = held_bytes(model)
    total = mem_total()
    peak_bytes = peak.peak - before + digital_bytes
    result = {
        "layers": args.layers, "experts": args.experts, "dtype": args.dtype, "device": cfg.name,
        "flow": "two-call" if args.two_call else "one-call", "parameters": params,
        "digital_bytes": digital_bytes, "held_bytes": held, "held_ratio": held / digital_bytes,
        "peak_rss_bytes": peak_bytes, "peak_rss_ratio": peak_bytes / digital_bytes,
        "digital_peak_rss_ratio": (digital_peak.peak - start_rss) / digital_bytes,
        "machine_memory_bytes": total, "peak_fraction_of_machine": peak_bytes / total if total else None,
        "ppl_digital": ppl_digital, "ppl_analog_romer": ppl_analog,
        "analog_eval_over_digital_eval": times["analog_eval_s"] / times["digital_eval_s"],
        "romer_calibration_tokens": report.tokens,
        **times,
    }
    print(result, flush=True)
    _common.write_json(args.out, {"settings": vars(args), "machine": _common.machine(), "results": [result]})
    _common.table(
        f"OLMoE-1B-7B-shaped model, {args.layers} layer(s) x {args.experts} experts, {args.dtype}, {cfg.name}",
        ["parameters", "convert s", "program+drift s", "ROMER s", "eval analog / digital", "held / digital",
         "peak / digital", "peak / machine"],
        [[f"{params / 1e9:.2f} B", f"{times['convert_s']:.1f}", f"{times['program_drift_s']:.1f}",
          f"{times['romer_calibrate_s']:.1f}", f"{result['analog_eval_over_digital_eval']:.2f}",
          f"{result['held_ratio']:.3f}", f"{result['peak_rss_ratio']:.3f}",
          f"{result['peak_fraction_of_machine']:.1%}" if total else "-"]],
    )


if __name__ == "__main__":
    main()
