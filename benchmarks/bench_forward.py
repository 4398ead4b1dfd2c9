"""Forward-pass speed: analog simulation vs digital, fast path vs AIHWKit's forward, ours vs naive experts.

Plain script (not a test):  python benchmarks/bench_forward.py [--models NAME ...] [--device pcm]

Measured in one run, interleaved, median of ``--repeat`` calls after warm-up:

* ``analog/digital``: the converted model (every router and expert on analog tiles, programmed
  and drifted; the default stacked engine) vs the same model left digital, on the same token blocks;
* ``aihwkit engine``: the model converted with ``engine="aihwkit"`` (one ``AnalogLinear`` per
  matrix) with the batched forward, and with AIHWKit's own tile forward
  (``romer_aihwkit.analog.fast.set_fast_forward(False)``);
* ``ours/naive`` (one MoE layer's experts, same hidden states and routing): our ``AnalogExperts``
  vs the naive route -- each expert's matrices an ``aihwkit.nn.AnalogLinear`` in an
  ``nn.ModuleList``, looped in Python per expert the way transformers' eager experts loop does.
"""

from __future__ import annotations

import argparse

import _common
import torch
from torch import nn


class NaiveExperts(nn.Module):
    """Each expert an ``AnalogLinear`` pair, looped per expert like the HF eager experts forward."""

    def __init__(self, experts, rpu_config_factory) -> None:
        super().__init__()
        from aihwkit.nn import AnalogLinear

        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn
        self.gate_up = nn.ModuleList()
        self.down = nn.ModuleList()
        for e in range(self.num_experts):
            for weight, dst in zip(experts.own_weights(e), (self.gate_up, self.down)):
                lin = AnalogLinear(weight.shape[1], weight.shape[0], bias=False, rpu_config=rpu_config_factory())
                lin.eval()
                lin.set_weights(weight.detach().float())
                dst.append(lin)

    @torch.no_grad()
    def program(self, t_inference: float) -> None:
        for lin in list(self.gate_up) + list(self.down):
            lin.program_analog_weights()
            lin.drift_analog_weights(t_inference)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit:
            e = e[0]
            top_k_pos, token_idx = torch.where(mask[e])
            gate, up = self.gate_up[e](hidden_states[token_idx]).chunk(2, dim=-1)
            h = self.down[e](self.act_fn(gate) * up)
            final.index_add_(0, token_idx, h * top_k_weights[token_idx, top_k_pos, None])
        return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="bundled model names (default: all)")
    parser.add_argument("--device", default="pcm", help="device config preset (default: pcm)")
    parser.add_argument("--blocks", type=int, default=4, help="token blocks per forward")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_forward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import romer_aihwkit as ra
    from romer_aihwkit.analog import AnalogExperts
    from romer_aihwkit.analog.fast import fast_forward

    models, cfg = _common.models_and_device(args.models, args.device)
    rows, results = [], []
    for name, factory in models:
        digital, tok = factory()
        analog, _ = factory()
        reference, _ = factory()
        x = _common.tokens_for(tok, args.blocks, args.seq_len, digital.config.vocab_size)
        ra.convert_to_analog_moe(analog, cfg)
        ra.convert_to_analog_moe(reference, cfg, engine="aihwkit")
        for m in (analog, reference):
            m.program_analog_weights(seed=0, t_inference=cfg.t_inference)

        def run_digital():
            with torch.no_grad():
                digital(x)

        def run_fast():
            with torch.no_grad():
                analog(x)

        def run_engine_aihwkit():
            with torch.no_grad():
                reference(x)

        def run_aihwkit():
            with torch.no_grad(), fast_forward(False):
                reference(x)

        model_t = _common.median_times(
            {"digital": run_digital, "analog_fast": run_fast, "analog_engine_aihwkit": run_engine_aihwkit,
             "analog_aihwkit": run_aihwkit}, args.repeat
        )

        # one MoE layer's experts on that layer's real hidden states and routing
        experts = next(m for m in analog.modules() if isinstance(m, AnalogExperts))
        captured = {}
        handle = experts.register_forward_pre_hook(lambda mod, a: captured.setdefault("args", a))
        run_fast()
        handle.remove()
        hidden, idx, w = captured["args"]
        naive = NaiveExperts(experts, cfg.rpu_config)
        naive.program(cfg.t_inference)

        def run_ours():
            with torch.no_grad():
                experts(hidden, idx, w)

        ref_experts = next(m for m in reference.modules() if isinstance(m, AnalogExperts))

        def run_ours_aihwkit():
            with torch.no_grad():
                ref_experts(hidden, idx, w)

        def run_naive():
            with torch.no_grad():
                naive(hidden, idx, w)

        exp_t = _common.median_times({"ours": run_ours, "ours_aihwkit": run_ours_aihwkit, "naive": run_naive}, args.repeat)
        res = {
            "model": name,
            "device": cfg.name,
            "tokens": int(x.numel()),
            "seconds": {**{f"model_{k}": v for k, v in model_t.items()}, **{f"experts_{k}": v for k, v in exp_t.items()}},
            "analog_over_digital": model_t["analog_fast"] / model_t["digital"],
            "engine_aihwkit_over_digital": model_t["analog_engine_aihwkit"] / model_t["digital"],
            "aihwkit_analog_over_digital": model_t["analog_aihwkit"] / model_t["digital"],
            "fast_over_aihwkit": model_t["analog_fast"] / model_t["analog_aihwkit"],
            "experts_ours_over_naive": exp_t["ours"] / exp_t["naive"],
            "experts_engine_aihwkit_over_naive": exp_t["ours_aihwkit"] / exp_t["naive"],
            "experts_tokens": int(hidden.shape[0]),
        }
        results.append(res)
        rows.append([
            name, cfg.name, res["tokens"],
            f"{1e3 * model_t['digital']:.1f}", f"{1e3 * model_t['analog_fast']:.1f}", f"{1e3 * model_t['analog_aihwkit']:.1f}",
            f"{res['analog_over_digital']:.2f}x", f"{res['engine_aihwkit_over_digital']:.2f}x",
            f"{res['aihwkit_analog_over_digital']:.2f}x", f"{res['experts_ours_over_naive']:.2f}x",
        ])
    _common.table(
        f"Forward speed ({args.threads} threads, median of {args.repeat})",
        ["model", "device", "tokens", "digital ms", "analog (stacked) ms", "AIHWKit tile forward ms", "stacked/digital",
         "aihwkit engine/digital", "AIHWKit forward/digital", "experts stacked/naive"],
        rows,
    )
    path = _common.write_json(args.out, {"settings": vars(args), "machine": _common.machine(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
