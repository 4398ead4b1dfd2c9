#!/usr/bin/env python
"""Train the small MoE causal LMs bundled with romer_aihwkit (random init, no downloads).

Models (transformers 5 classes, configs built here):

* ``olmoe-tiny``     ``OlmoeForCausalLM``      softmax top-2 of 8 experts, no shared expert
* ``qwen2moe-tiny``  ``Qwen2MoeForCausalLM``   softmax top-2 of 8 experts + gated shared expert
* ``deepseek-tiny``  ``DeepseekV3ForCausalLM`` sigmoid scores + e_score_correction_bias,
  group-limited top-2 (n_group=4, topk_group=2), 1 shared expert, first layer dense, MLA attention
* ``olmoe-64x8``     ``OlmoeForCausalLM``      OLMoE-1B-7B's routing regime: softmax top-8 of 64
  fine-grained experts (intermediate 32), no shared expert; its own defaults in ``MODEL_PRESETS``
  (64 experts, top-8, intermediate 32, 1500 steps, 75 warmup), trained with ``--threads 1``

Common: vocab 4096 (bundled BPE tokenizer), hidden 128, 4 layers, 4 heads, expert intermediate
128, tied embeddings, max_position_embeddings 512; trained on the bundled Shakespeare ``train``
split in non-overlapping blocks of ``--seq-len`` tokens, shuffled each epoch with a fixed seed.

Optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warmup then cosine decay
to 10 % of the peak learning rate, gradient clipping at 1.0, float32 on CPU.

Load balancing, as the real models do:

* OLMoE / Qwen2-MoE: HF's Switch-style auxiliary loss (``output_router_logits=True``,
  ``router_aux_loss_coef``), computed by the model and added to ``loss``.
* DeepSeek-V3 (HF has no aux loss for it): both of DeepSeek-V3's mechanisms, implemented here —
  (a) a Switch-style auxiliary loss on the router outputs captured by forward hooks:
  ``E * sum_e f_e * P_e`` per MoE layer (``f_e`` = share of top-k slots actually chosen, ``P_e`` =
  mean of the sigmoid scores normalised per token), averaged over layers, weight
  ``--aux-coef``; and (b) the auxiliary-loss-free bias update: after every step,
  ``e_score_correction_bias[e] += --bias-update-rate * sign(mean_load - load_e)``.

Results per model (``training.json`` in the model folder; loss curve also in ``curve.json``):
validation loss curve, validation and test perplexity (whole splits, fixed blocks of seq_len),
a unigram baseline (add-one smoothed unigram fit on the train tokens, evaluated on the same
predicted test tokens), and per-layer expert load CV on the test split (std/mean of the share of
top-k slots per expert, from the indices the router modules actually return — i.e. each family's
own routing, including DeepSeek's group limit and bias). Models are saved with
``save_pretrained(safe_serialization=True)`` in float16, with the tokenizer files, and reloaded to
check the perplexity.

Usage::

    python scripts/train_tiny_moe.py                       # all four, defaults below
    python scripts/train_tiny_moe.py --models olmoe-tiny --steps 20 --out /tmp/m   # smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from romer_aihwkit.data import text_blocks  # noqa: E402
from romer_aihwkit.evaluation.perplexity import perplexity  # noqa: E402
from romer_aihwkit.models import TOKENIZER_DIR, bundled_tokenizer  # noqa: E402

MODEL_NAMES = ("olmoe-tiny", "qwen2moe-tiny", "deepseek-tiny", "olmoe-64x8")
# Per-model defaults that differ from the common ones; an option given on the command line wins.
# olmoe-64x8 is in OLMoE-1B-7B's routing regime (64 fine-grained experts, top-8): the same active
# expert width per token as the tiny models (8 x 32 = 2 x 128), eight times the experts.
MODEL_PRESETS = {
    "olmoe-64x8": {"experts": 64, "top_k": 8, "expert_size": 32, "steps": 1500, "warmup": 75},
}
COMMON_DEFAULTS = {"experts": 8, "top_k": 2, "expert_size": 128, "steps": 800, "warmup": 40}


def model_args(name: str, args):
    """``args`` with ``name``'s preset filled in where the command line left an option unset."""
    out = argparse.Namespace(**vars(args))
    for key, default in COMMON_DEFAULTS.items():
        if getattr(out, key) is None:
            setattr(out, key, MODEL_PRESETS.get(name, {}).get(key, default))
    return out


def make_config(name: str, args, tok):
    common = dict(
        vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.02,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        num_experts_per_tok=args.top_k, output_router_logits=False, use_cache=True,
    )
    if name in ("olmoe-tiny", "olmoe-64x8"):
        from transformers import OlmoeConfig

        return OlmoeConfig(**common, intermediate_size=args.expert_size, num_experts=args.experts,
                           router_aux_loss_coef=args.aux_coef, norm_topk_prob=False)
    if name == "qwen2moe-tiny":
        from transformers import Qwen2MoeConfig

        return Qwen2MoeConfig(**common, intermediate_size=2 * args.expert_size,
                              moe_intermediate_size=args.expert_size,
                              shared_expert_intermediate_size=2 * args.expert_size,
                              num_experts=args.experts, router_aux_loss_coef=args.aux_coef,
                              norm_topk_prob=False, decoder_sparse_step=1)
    if name == "deepseek-tiny":
        from transformers import DeepseekV3Config

        return DeepseekV3Config(**common, intermediate_size=2 * args.expert_size,
                                moe_intermediate_size=args.expert_size, n_routed_experts=args.experts,
                                n_shared_experts=1, n_group=4, topk_group=2, first_k_dense_replace=1,
                                norm_topk_prob=True, routed_scaling_factor=1.0,
                                q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16,
                                qk_nope_head_dim=16, v_head_dim=32)
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")


def routers(model):
    """(layer_index, router module) for every MoE layer, in order."""
    out = []
    for mname, mod in model.named_modules():
        if type(mod).__name__.lower().endswith("topkrouter"):
            layer = int(mname.split("layers.")[1].split(".")[0])
            out.append((layer, mod))
    return out


class RouterTap:
    """Forward hooks on the router modules: keep (logits, top-k indices) of the last forward, or
    accumulate per-expert selection counts."""

    def __init__(self, model, n_experts, keep_logits=False, count=False):
        self.n = n_experts
        self.keep_logits = keep_logits
        self.count = count
        self.last = {}
        self.counts = {}
        self.handles = [r.register_forward_hook(self._hook(layer)) for layer, r in routers(model)]

    def _hook(self, layer):
        def fn(mod, inp, out):
            logits, _, idx = out
            if self.keep_logits:
                self.last[layer] = (logits, idx)
            if self.count:
                c = torch.bincount(idx.reshape(-1).cpu(), minlength=self.n).double()
                self.counts[layer] = self.counts.get(layer, 0) + c
        return fn

    def close(self):
        for h in self.handles:
            h.remove()


def deepseek_aux_loss(tap: RouterTap, n_experts: int, top_k: int):
    losses = []
    for logits, idx in tap.last.values():
        scores = logits.float().sigmoid()
        p = (scores / scores.sum(-1, keepdim=True)).mean(0)
        f = torch.bincount(idx.reshape(-1), minlength=n_experts).float() / idx.numel()
        losses.append(n_experts * (f * p).sum())
    return torch.stack(losses).mean()


@torch.no_grad()
def deepseek_bias_update(model, tap: RouterTap, n_experts: int, rate: float):
    mods = dict(routers(model))
    for layer, (_, idx) in tap.last.items():
        load = torch.bincount(idx.reshape(-1), minlength=n_experts).float()
        mods[layer].e_score_correction_bias += rate * torch.sign(load.mean() - load)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    prog = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


@torch.no_grad()
def mean_loss(model, blocks, bs):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(blocks), bs):
        b = blocks[i : i + bs]
        tot += float(model(input_ids=b, labels=b, use_cache=False).loss) * b.shape[0]
        n += b.shape[0]
    model.train()
    return tot / n


def unigram_ppl(train_blocks, test_blocks, vocab):
    counts = torch.bincount(train_blocks.reshape(-1), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    targets = test_blocks[:, 1:].reshape(-1)
    return float(torch.exp(-logp[targets].mean()))


def load_cv(model, blocks, n_experts, bs):
    tap = RouterTap(model, n_experts, count=True)
    try:
        ppl = perplexity(model, blocks, batch_size=bs, progress=False)
    finally:
        tap.close()
    per_layer = {}
    for layer, c in sorted(tap.counts.items()):
        load = c / c.sum()
        per_layer[str(layer)] = {
            "cv": float(load.std(unbiased=False) / load.mean()),
            "max_load_ratio": float(load.max() * n_experts),
            "loads": [round(float(x), 5) for x in load],
        }
    return ppl, per_layer


def train_one(name, args, tok, train_blocks, val_blocks, test_blocks, out_root):
    from transformers import AutoModelForCausalLM

    seed = args.seed
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    config = make_config(name, args, tok)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if args.experts_implementation != "default":
        model.set_experts_implementation(args.experts_implementation) if hasattr(
            model, "set_experts_implementation") else setattr(model.config, "_experts_implementation",
                                                             args.experts_implementation)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    is_ds = name == "deepseek-tiny"
    tap = RouterTap(model, args.experts, keep_logits=True) if is_ds else None
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_blocks), generator=g)
    pos = 0
    val_sub = val_blocks[: args.eval_blocks]
    curve = []
    model.train()
    t0 = time.time()
    ema = None
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(train_blocks), generator=g), 0
        batch = train_blocks[order[pos : pos + args.batch_size]]
        pos += args.batch_size
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, args)
        if is_ds:
            out = model(input_ids=batch, labels=batch, use_cache=False)
            lm = out.loss
            aux = deepseek_aux_loss(tap, args.experts, args.top_k)
            loss = lm + args.aux_coef * aux
        else:
            out = model(input_ids=batch, labels=batch, use_cache=False, output_router_logits=True)
            loss = out.loss
            aux = out.aux_loss
            lm = loss - args.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if is_ds:
            deepseek_bias_update(model, tap, args.experts, args.bias_update_rate)
            tap.last.clear()
        lm_v = float(lm.detach())
        ema = lm_v if ema is None else 0.95 * ema + 0.05 * lm_v
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps or step == 0:
            vl = mean_loss(model, val_sub, args.eval_batch_size)
            rec = {"step": step + 1, "train_loss": round(ema, 4), "train_aux": round(float(aux.detach()), 4),
                   "val_loss": round(vl, 4), "lr": lr_at(step, args), "elapsed_s": round(time.time() - t0, 1)}
            curve.append(rec)
            print(name, json.dumps(rec), flush=True)
    train_time = time.time() - t0
    if tap is not None:
        tap.close()
    model.eval()
    t1 = time.time()
    val_ppl = perplexity(model, val_blocks, batch_size=args.eval_batch_size, progress=False)
    test_ppl, cv = load_cv(model, test_blocks, args.experts, args.eval_batch_size)
    uni = unigram_ppl(train_blocks, test_blocks, len(tok))
    uni_val = unigram_ppl(train_blocks, val_blocks, len(tok))

    sub = test_blocks[: args.reload_check_blocks]
    sub_ppl = perplexity(model, sub, batch_size=args.eval_batch_size, progress=False)

    out_dir = out_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.config.output_router_logits = False
    model.to(torch.float16).save_pretrained(str(out_dir), safe_serialization=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out_dir / f.name)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32, local_files_only=True)
    reload_ppl = perplexity(reloaded, sub, batch_size=args.eval_batch_size, progress=False)
    eval_time = time.time() - t1
    moe_layers = sorted(int(k) for k in cv)
    result = {
        "name": name,
        "architecture": type(model).__name__,
        "n_params": n_params,
        "n_params_routed_experts": sum(p.numel() for n, p in model.named_parameters()
                                       if ".experts." in n),
        "moe_layers": moe_layers,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": {k: getattr(config, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_experts_per_tok", "max_position_embeddings", "tie_word_embeddings") if hasattr(config, k)},
        "train": {
            "steps": args.steps, "tokens": args.steps * args.batch_size * args.seq_len,
            "train_split_tokens": int(train_blocks.numel()),
            "epochs": round(args.steps * args.batch_size / len(train_blocks), 3),
            "time_s": round(train_time, 1),
            "load_balancing": ("aux loss (hooks) + e_score_correction_bias sign update" if is_ds
                               else "HF Switch aux loss (output_router_logits=True)"),
        },
        "results": {
            "val_ppl": val_ppl, "test_ppl": test_ppl,
            "reload_check": {"test_blocks": int(sub.shape[0]), "ppl_before_save": sub_ppl,
                             "ppl_fp16_reloaded": reload_ppl},
            "unigram_val_ppl": uni_val, "unigram_test_ppl": uni,
            "val_tokens_predicted": int(val_blocks[:, 1:].numel()),
            "test_tokens_predicted": int(test_blocks[:, 1:].numel()),
            "test_load_cv": {k: v["cv"] for k, v in cv.items()},
            "test_load_cv_mean": float(np.mean([v["cv"] for v in cv.values()])),
            "test_max_load_ratio": {k: v["max_load_ratio"] for k, v in cv.items()},
            "test_expert_loads": {k: v["loads"] for k, v in cv.items()},
            "eval_time_s": round(eval_time, 1),
        },
        "curve": curve,
        "environment": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads()},
    }
    (out_dir / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    print(name, "DONE", json.dumps({k: result["results"][k] for k in (
        "val_ppl", "test_ppl", "reload_check", "unigram_test_ppl", "test_load_cv_mean")}), flush=True)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--out", type=Path, default=REPO / "romer_aihwkit" / "bundled" / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=None, help="default: the model's preset, else 8")
    ap.add_argument("--top-k", type=int, default=None, help="default: the model's preset, else 2")
    ap.add_argument("--expert-size", type=int, default=None, help="default: the model's preset, else 128")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's preset, else 800")
    ap.add_argument("--warmup", type=int, default=None, help="default: the model's preset, else 40")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--bias-update-rate", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-blocks", type=int, default=64, help="validation blocks for the loss curve")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--reload-check-blocks", type=int, default=256,
                    help="test blocks on which the fp16-saved model is reloaded and compared")
    ap.add_argument("--experts-implementation", default="default",
                    help="training-time experts kernel (default / grouped_mm / batched_mm); saved configs use the default")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = bundled_tokenizer()
    train_blocks = text_blocks("bundled", tok, seq_len=args.seq_len, split="train")
    val_blocks = text_blocks("bundled", tok, seq_len=args.seq_len, split="validation")
    test_blocks = text_blocks("bundled", tok, seq_len=args.seq_len, split="test")
    print(f"blocks train {tuple(train_blocks.shape)} val {tuple(val_blocks.shape)} test {tuple(test_blocks.shape)}",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        train_one(name, model_args(name, args), tok, train_blocks, val_blocks, test_blocks, args.out)


if __name__ == "__main__":
    main()
