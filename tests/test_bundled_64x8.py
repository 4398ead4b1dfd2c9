"""The bundled olmoe-64x8: OLMoE's routing regime (64 fine-grained experts, top-8), trained for real."""

from __future__ import annotations

import json
import math

import torch

from romer_aihwkit.data import text_blocks
from romer_aihwkit.evaluation.perplexity import perplexity
from romer_aihwkit.models import bundled_model_path, list_bundled_models, load_bundled_model


def test_olmoe_64x8_is_bundled_in_olmoe_regime_and_trained():
    assert "olmoe-64x8" in list_bundled_models()
    model, tok = load_bundled_model("olmoe-64x8")
    cfg = model.config
    assert type(model).__name__ == "OlmoeForCausalLM"
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (64, 8) and cfg.num_hidden_layers >= 4
    info = json.loads((bundled_model_path("olmoe-64x8") / "training.json").read_text())
    assert info["settings"]["experts"] == 64 and info["settings"]["top_k"] == 8
    assert info["results"]["test_ppl"] < 0.25 * info["results"]["unigram_test_ppl"]
    # 4 held-out blocks of dialogue: the saved weights are the trained ones
    blocks = text_blocks("bundled", tok, seq_len=128, split="test", max_blocks=104)[100:]
    torch.set_num_threads(1)
    ppl = perplexity(model, blocks, batch_size=4, progress=False)
    assert math.isfinite(ppl) and ppl < 0.25 * info["results"]["unigram_test_ppl"]
    assert (bundled_model_path("olmoe-64x8") / "model.safetensors").stat().st_size < 8.5e6
