"""Rounding error of holding programmed tiles in bf16 / fp16, against the analog noise itself.

Plain script (not a test):  python benchmarks/bench_bf16_tiles.py [--devices pcm rram-wan2022 ...]

For a bf16/fp16 model the stacked engine holds the programmed tiles in the model's dtype (memory at
the digital model's size). Programming and drift are computed in float32 and rounded once. This
script programs one OLMoE-1B-7B-shaped expert matrix (2048 x 1024 and 1024-wide ``down``, random
weights in the checkpoint's scale) per device preset and compares, in effective weight units
(tile weight x mapping scale x drift alpha):

* ``noise``: RMS of (programmed and drifted weights - clean weights): the chip's own error;
* ``rounding``: RMS of (tile held in bf16/fp16 - tile in float32);

and reports ``rounding / noise`` (a ratio far below 1 means the dtype adds nothing measurable).
Results: ``benchmarks/results/bench_bf16_tiles.json``.
"""

from __future__ import annotations

import argparse

import _common
import torch


def effective(stack, m: int = 0) -> torch.Tensor:
    out = torch.empty(stack.out_features, stack.in_features)
    for s, (i0, i1) in enumerate(stack.grid.in_bounds):
        out[:, i0:i1] = stack.tiles[m, :, i0:i1].float() * stack.scales[m, s].reshape(-1, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=["pcm", "hermes-pcm", "rram-wan2022", "rram-cmo", "gaussian-2"])
    parser.add_argument("--shape", nargs=2, type=int, default=[2048, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)

    import romer_aihwkit as ra
    from romer_aihwkit.analog.reference import ReferenceStore
    from romer_aihwkit.analog.stacked import AnalogStack

    g = torch.Generator().manual_seed(0)
    clean = 0.02 * torch.randn(1, *args.shape, generator=g)
    rows, results = [], []
    for name in args.devices:
        cfg = ra.load_device_config(name)
        stack = AnalogStack(clean.clone(), ["layer.experts.0.down"], cfg.rpu_config(), "expert",
                            ReferenceStore("memory"), "k")
        stack.program(0, cfg.t_inference)
        exact = effective(stack)
        noise = (exact - clean[0]).pow(2).mean().sqrt().item()
        res = {"device": name, "shape": args.shape, "noise_rms": noise, "weight_rms": clean.pow(2).mean().sqrt().item()}
        for dtype in (torch.bfloat16, torch.float16):
            rounded = stack.tiles.to(dtype).float()
            err = 0.0
            for s, (i0, i1) in enumerate(stack.grid.in_bounds):
                d = (rounded[0, :, i0:i1] - stack.tiles[0, :, i0:i1]) * stack.scales[0, s].reshape(-1, 1)
                err += d.pow(2).sum().item()
            rms = (err / clean[0].numel()) ** 0.5
            key = str(dtype).replace("torch.", "")
            res[f"{key}_rounding_rms"] = rms
            res[f"{key}_over_noise"] = rms / noise
        results.append(res)
        rows.append([name, f"{res['weight_rms']:.2e}", f"{noise:.2e}", f"{res['bfloat16_rounding_rms']:.2e}",
                     f"{res['bfloat16_over_noise']:.3f}", f"{res['float16_over_noise']:.4f}"])
    _common.table("Programmed tiles held in bf16 / fp16: rounding error vs the chip's own weight error",
                  ["device", "weight RMS", "noise RMS", "bf16 rounding RMS", "bf16 / noise", "fp16 / noise"], rows)
    path = _common.write_json("bench_bf16_tiles", {"settings": vars(args), "machine": _common.machine(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
