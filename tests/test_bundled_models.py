"""The bundled MoE models load offline and are really trained."""
from __future__ import annotations

import json
import math

import pytest
import torch

from romer_aihwkit.data import text_blocks
from romer_aihwkit.evaluation.perplexity import perplexity
from romer_aihwkit.models import (
    bundled_model_path,
    bundled_tokenizer,
    list_bundled_models,
    load_bundled_model,
    load_model,
)

EXPECTED = {"olmoe-tiny": "OlmoeForCausalLM", "qwen2moe-tiny": "Qwen2MoeForCausalLM",
            "deepseek-tiny": "DeepseekV3ForCausalLM"}


@pytest.fixture(scope="module")
def blocks():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    # 4 blocks of dialogue from the middle of the first test play (the opening blocks are the
    # cast list, which is much harder to predict than the plays themselves)
    return text_blocks("bundled", bundled_tokenizer(), seq_len=128, split="test", max_blocks=104)[100:]


def test_list_bundled_models():
    assert set(EXPECTED) <= set(list_bundled_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_model_loads_offline_and_is_trained(name, blocks):
    model, tok = load_bundled_model(name)
    assert type(model).__name__ == EXPECTED[name]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert tok is not None and len(tok) == model.config.vocab_size == 4096
    info = json.loads((bundled_model_path(name) / "training.json").read_text())
    ppl = perplexity(model, blocks, batch_size=4, progress=False)
    assert math.isfinite(ppl)
    uni = info["results"]["unigram_test_ppl"]
    assert uni > 100
    assert ppl < 0.5 * uni, f"{name}: ppl {ppl:.1f} not far below unigram {uni:.1f}"
    # stored weights are half precision and the folder is small
    st = bundled_model_path(name) / "model.safetensors"
    assert st.stat().st_size < 8e6


def test_model_family_features():
    cfg = {n: json.loads((bundled_model_path(n) / "config.json").read_text()) for n in EXPECTED}
    assert cfg["qwen2moe-tiny"]["shared_expert_intermediate_size"] > 0
    ds = cfg["deepseek-tiny"]
    assert ds["n_group"] == 4 and ds["topk_group"] == 2 and ds["n_shared_experts"] == 1
    assert ds["first_k_dense_replace"] == 1


def test_load_model_local_folder_and_errors(tmp_path, blocks):
    path = bundled_model_path("olmoe-tiny")
    model, tok = load_model(str(path))
    ref, _ = load_model("olmoe-tiny")
    with torch.no_grad():
        a = model(input_ids=blocks[:1, :32]).logits
        b = ref(input_ids=blocks[:1, :32]).logits
    assert torch.allclose(a, b)
    assert tok.decode(tok("Now is the winter")["input_ids"]) == "Now is the winter"
    with pytest.raises(ValueError, match="olmoe-tiny"):
        load_bundled_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing_folder")


def test_load_model_hub_id_offline_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no slow network retries
    with pytest.raises(OSError, match="local folder"):
        load_model("romer-test-org/definitely-not-a-model")
