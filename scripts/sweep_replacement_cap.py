"""Sweep ROMER's replacement budget (``Romer(max_masked_share=...)``): recovery against edit.

For every cap, a method ``romer-capX`` (ROMER with that cap, everything else at its defaults) is
compared with ``global`` on the same chip instances, with the noise-free controls on: each cap's
rows carry the masked share per layer, the edit (the method on the ``ideal`` device minus digital
perplexity) and the share of ``global``'s analog gap it recovers beyond that edit. The results are
an ordinary comparison folder (``results.json``, ``report.md``, plots), resumable, plus
``sweep.md`` with the table below.

Run (small; the docs name the full sweep):

    python scripts/sweep_replacement_cap.py --model olmoe-tiny --devices pcm --seeds 3 \\
        --caps none,0.25,0.125,0 --eval-blocks 8 --calib-blocks 8 --out /tmp/cap-sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

from romer_aihwkit.atomic import atomic_write_text
from romer_aihwkit.calibration import Romer
from romer_aihwkit.evaluation.report import controls_table
from romer_aihwkit.experiments import CompareSettings, run_comparison
from romer_aihwkit.experiments.methods import METHODS, Method, register_method


def cap_method(cap: float | None) -> str:
    """Register (once) and return the name of ROMER with replacement budget ``cap``."""
    name = "romer-capnone" if cap is None else f"romer-cap{cap:g}"
    if name not in METHODS:
        register_method(Method(name, f"ROMER with max_masked_share={cap}",
                               callbacks=lambda: [Romer(max_masked_share=cap)]))
    return name


def parse_caps(text: str) -> list[float | None]:
    caps: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        caps.append(None if part in ("none", "off") else float(part))
    return caps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="olmoe-tiny", help="comma-separated models")
    ap.add_argument("--devices", default="pcm", help="comma-separated device configs")
    ap.add_argument("--caps", default="none,0.5,0.25,0.125,0.0625,0",
                    help="comma-separated caps (share of a layer's experts; 'none' = no cap)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-blocks", type=int, default=24)
    ap.add_argument("--calib-blocks", type=int, default=16)
    ap.add_argument("--eval-text", default="bundled")
    ap.add_argument("--calib-text", default="bundled")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    methods = ["global", *(cap_method(c) for c in parse_caps(args.caps))]
    settings = CompareSettings(models=args.model.split(","), devices=args.devices.split(","), methods=methods,
                               seeds=list(range(args.seeds)), eval_text=args.eval_text, calib_text=args.calib_text,
                               seq_len=args.seq_len, eval_blocks=args.eval_blocks, calib_blocks=args.calib_blocks,
                               batch_size=args.batch_size)
    results = run_comparison(settings, args.out)
    from romer_aihwkit.evaluation.plots import write_plots
    from romer_aihwkit.evaluation.report import write_report

    write_report(results, args.out, plots=write_plots(results, args.out))
    lines = ["# ROMER replacement budget sweep", "",
             f"`{' '.join(['python scripts/sweep_replacement_cap.py', *_argv(args)])}`", ""]
    for (model, device, t) in results.groups():
        digital = results.digital_ppl(model)
        lines += [f"## {model} · {device} · t = {t:g} s (digital ppl {digital:.2f})", ""]
        lines += controls_table(results, model, device, t) + [""]
    text = "\n".join(lines)
    atomic_write_text(args.out / "sweep.md", text)
    print(text)


def _argv(args: argparse.Namespace) -> list[str]:
    return [f"--model {args.model}", f"--devices {args.devices}", f"--caps {args.caps}", f"--seeds {args.seeds}",
            f"--seq-len {args.seq_len}", f"--eval-blocks {args.eval_blocks}", f"--calib-blocks {args.calib_blocks}",
            f"--eval-text {args.eval_text}", f"--calib-text {args.calib_text}", f"--out {args.out}"]


if __name__ == "__main__":
    main()
