"""Periphery overhead against layer width: one analog matrix vs ``nn.Linear``, same tokens.

The analog periphery (DAC/ADC rounding, output noise, abs-max scaling) is O(tokens x (in + out)),
the matmul O(tokens x in x out): the simulated/digital ratio should fall as layers widen. This
measures it, in one run, for square matrices of growing width (the bundled models are 128 wide;
OLMoE's experts are 2048 x 1024).

Run: python benchmarks/bench_width.py [--device pcm] [--widths 128 512 1024 2048] [--tokens 256]
"""

from __future__ import annotations

import argparse

import _common
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="pcm")
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import romer_aihwkit as ra
    from romer_aihwkit.analog.fast import fast_forward
    from romer_aihwkit.analog.matrix import AnalogMatrix

    cfg = ra.load_device_config(args.device)
    rows, records = [], []
    for width in args.widths:
        torch.manual_seed(0)
        linear = torch.nn.Linear(width, width, bias=False)
        matrix = AnalogMatrix(linear.weight, None, cfg.rpu_config(), "expert", f"bench.{width}")
        matrix.program(0)
        matrix.drift(cfg.t_inference, 0)
        x = torch.randn(args.tokens, width)

        def aihwkit_forward():
            with fast_forward(False):
                matrix(x)

        with torch.no_grad():
            times = _common.median_times(
                {"digital": lambda: linear(x), "fast": lambda: matrix(x), "aihwkit": aihwkit_forward}, args.repeat
            )
        record = {"width": width, **times, "fast/digital": times["fast"] / times["digital"],
                  "aihwkit/digital": times["aihwkit"] / times["digital"]}
        records.append(record)
        rows.append([width, f"{times['digital'] * 1e3:.2f}", f"{times['fast'] * 1e3:.2f}", f"{times['aihwkit'] * 1e3:.2f}",
                     f"{record['fast/digital']:.2f}x", f"{record['aihwkit/digital']:.2f}x"])
    _common.table(f"one {args.device} matrix (width x width) on {args.tokens} tokens",
                  ["width", "digital ms", "fast ms", "aihwkit ms", "fast/digital", "aihwkit/digital"], rows)
    _common.write_json("bench_width", {"machine": _common.machine(), "settings": vars(args), "results": records})


if __name__ == "__main__":
    main()
