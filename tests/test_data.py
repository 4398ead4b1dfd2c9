"""Bundled corpus, tokenizer, text_blocks and batch normalisation."""
from __future__ import annotations

import gzip
import hashlib

import pytest
import torch

from romer_aihwkit.data import (
    BUNDLED_SPLITS,
    bundled_manifest,
    bundled_text_path,
    calibration_and_eval_blocks,
    count_tokens,
    iter_token_batches,
    read_bundled_documents,
    read_bundled_text,
    text_blocks,
)
from romer_aihwkit.models import TOKENIZER_DIR, bundled_tokenizer


@pytest.fixture(scope="module")
def tok():
    return bundled_tokenizer()


def test_manifest_checksums_match_shipped_files():
    man = bundled_manifest()
    assert set(man["splits"]) == set(BUNDLED_SPLITS)
    for split, info in man["splits"].items():
        path = bundled_text_path(split)
        assert path.name == info["file"]
        with gzip.open(path, "rb") as f:
            raw = f.read()
        assert len(raw) == info["bytes"]
        assert hashlib.sha256(raw).hexdigest() == info["sha256"]
        # reproducible gzip: mtime field (bytes 4..8) is zero
        assert path.read_bytes()[4:8] == b"\x00\x00\x00\x00"


def test_splits_disjoint_by_play_and_text():
    man = bundled_manifest()
    plays = {s: set(i["plays"]) for s, i in man["splits"].items()}
    assert not plays["train"] & plays["validation"]
    assert not plays["train"] & plays["test"]
    assert not plays["validation"] & plays["test"]
    assert len(plays["validation"]) == 3 and len(plays["test"]) == 3
    assert len(plays["train"]) >= 25
    # poems excluded, one copy per play
    all_plays = plays["train"] | plays["validation"] | plays["test"]
    assert "sonnets" not in all_plays and "rape_of_lucrece" not in all_plays
    files = [f for i in man["splits"].values() for f in i["source_files"]]
    assert len(files) == len(set(files)) == len(all_plays)
    # the text itself: no long line of the test split appears in the train split
    train = read_bundled_text("train")
    test_lines = [ln for ln in read_bundled_text("test").splitlines() if len(ln) > 60]
    assert len(test_lines) > 100
    shared = sum(ln in train for ln in test_lines[:400])
    assert shared < 0.05 * min(400, len(test_lines))
    docs = read_bundled_documents("test")
    assert len(docs) == 3
    assert "Romeo" in read_bundled_text("test") and "Macbeth" in read_bundled_text("validation")
    assert "Gutenberg" not in read_bundled_text("validation")
    assert "\r" not in read_bundled_text("test")
    assert "\n\n\n\n" not in docs[0]


def test_tokenizer_roundtrip_and_files(tok):
    assert (TOKENIZER_DIR / "tokenizer.json").exists()
    assert (TOKENIZER_DIR / "tokenizer_config.json").exists()
    assert len(tok) == 4096
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    sample = read_bundled_text("test")[5000:7000]
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == sample
    assert len(ids) < len(sample) / 2  # BPE actually compresses English text


def test_text_blocks_bundled_shapes_and_stride(tok):
    b = text_blocks("bundled", tok, seq_len=64, split="validation", max_blocks=10)
    assert b.shape == (10, 64) and b.dtype == torch.long
    s = text_blocks("shakespeare", tok, seq_len=64, split="validation", max_blocks=5, stride=32)
    assert s.shape == (5, 64)
    assert torch.equal(s[1, :32], s[0, 32:])  # overlap of half a block
    assert torch.equal(s[0], b[0]) and torch.equal(s[2], b[1])
    calib, ev = calibration_and_eval_blocks(tok, seq_len=64, calib_blocks=4, eval_blocks=4)
    assert calib.shape == ev.shape == (4, 64)
    assert not torch.equal(calib, ev)


def test_text_blocks_file_drops_tail(tmp_path, tok):
    text = "Friends, Romans, countrymen, lend me your ears.\n" * 40
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    p = tmp_path / "a.txt"
    p.write_text(text)
    b = text_blocks(str(p), tok, seq_len=16)
    assert b.shape == (n // 16, 16)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    assert torch.equal(b.reshape(-1), ids[: (n // 16) * 16])
    # gzip file gives the same blocks
    gz = tmp_path / "a.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    assert torch.equal(text_blocks(gz, tok, seq_len=16), b)
    st = text_blocks(p, tok, seq_len=16, stride=4)
    assert st.shape[0] == (n - 16) // 4 + 1


def test_text_blocks_folder_source_eos_between_docs(tmp_path, tok):
    (tmp_path / "b.txt").write_text("Second document here. " * 10)
    (tmp_path / "a.txt").write_text("First document here. " * 10)
    (tmp_path / "ignored.md").write_text("not text")
    b = text_blocks(tmp_path, tok, seq_len=8)
    flat = b.reshape(-1).tolist()
    a_ids = tok("First document here. " * 10, add_special_tokens=False)["input_ids"]
    assert flat[: len(a_ids)] == a_ids  # sorted: a.txt first
    assert flat[len(a_ids)] == tok.eos_token_id


def test_text_blocks_errors(tmp_path, tok):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text_blocks(str(missing), tok)
    short = tmp_path / "short.txt"
    short.write_text("Hello world")
    n = len(tok("Hello world", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"{n} tokens.*seq_len=256"):
        text_blocks(short, tok, seq_len=256)
    with pytest.raises(ValueError, match="train, validation, test"):
        text_blocks("bundled", tok, split="dev")
    with pytest.raises(FileNotFoundError):
        text_blocks(tmp_path / "emptydir_does_not_exist", tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt"):
        text_blocks(tmp_path / "empty", tok)
    with pytest.raises(TypeError):
        text_blocks(12345, tok)
    with pytest.raises(ValueError, match="stride"):
        text_blocks("bundled", tok, seq_len=8, split="test", stride=0)


def test_iter_token_batches_forms():
    x = torch.arange(50).reshape(10, 5)
    out = list(iter_token_batches(x, batch_size=4))
    assert [o.shape[0] for o in out] == [4, 4, 2]
    assert torch.equal(torch.cat(out), x)
    assert len(list(iter_token_batches(x))) == 1
    out = list(iter_token_batches([x[:3], x[3]]))
    assert [tuple(o.shape) for o in out] == [(3, 5), (1, 5)]
    out = list(iter_token_batches([{"input_ids": x[:2], "attention_mask": torch.ones(2, 5)}]))
    assert torch.equal(out[0], x[:2])
    out = list(iter_token_batches(iter([x[:1].int()])))  # generators and int32 work
    assert out[0].dtype == torch.long
    assert count_tokens(x) == 50
    assert count_tokens([x[:3], x[3:]]) == 50


def test_iter_token_batches_errors():
    with pytest.raises(ValueError, match="empty"):
        list(iter_token_batches([]))
    with pytest.raises(TypeError):
        list(iter_token_batches(3.0))
    with pytest.raises(TypeError):
        list(iter_token_batches("some text"))
    with pytest.raises(TypeError, match="batch 1"):
        list(iter_token_batches([torch.zeros(2, 3, dtype=torch.long), [1, 2, 3]]))
    with pytest.raises(TypeError, match="integer"):
        list(iter_token_batches(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="input_ids"):
        list(iter_token_batches([{"ids": torch.zeros(1, 3, dtype=torch.long)}]))
    with pytest.raises(ValueError, match="shape"):
        list(iter_token_batches(torch.zeros(2, 3, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        list(iter_token_batches(torch.zeros(0, 4, dtype=torch.long)))


def test_dataset_source_when_available(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a b c"] * 3}),
        "test": datasets.Dataset.from_dict({"text": ["To be or not to be."] * 30}),
    })
    b = text_blocks(dd, tok, seq_len=8, split="test")
    assert b.shape[1] == 8 and b.shape[0] > 5
    with pytest.raises(ValueError, match="train, test"):
        text_blocks(dd, tok, seq_len=8, split="validation")
    dd.save_to_disk(str(tmp_path / "ds"))
    assert torch.equal(text_blocks(tmp_path / "ds", tok, seq_len=8, split="test"), b)
