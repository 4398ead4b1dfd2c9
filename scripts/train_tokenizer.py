#!/usr/bin/env python
"""Train the bundled byte-level BPE tokenizer on the train split of the bundled corpus.

Settings: byte-level BPE (GPT-2 style byte alphabet, no prefix space), vocabulary 4096
including the single special token ``<|endoftext|>`` (used as bos, eos and pad), min frequency 2,
trained with the ``tokenizers`` library on the plays of ``train.txt.gz`` (one play per document).

Writes ``tokenizer.json`` + ``tokenizer_config.json`` (loadable with
``AutoTokenizer.from_pretrained(folder)`` / ``PreTrainedTokenizerFast``) to
``romer_aihwkit/bundled/tokenizer/``.

Usage::

    python scripts/train_tokenizer.py [--vocab-size 4096] [--out DIR]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "romer_aihwkit" / "bundled" / "corpus"
DEFAULT_OUT = REPO / "romer_aihwkit" / "bundled" / "tokenizer"
EOS = "<|endoftext|>"


def train(vocab_size: int = 4096, min_frequency: int = 2):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    manifest = json.loads((CORPUS / "manifest.json").read_text())
    with gzip.open(CORPUS / "train.txt.gz", "rt", encoding="utf-8") as f:
        docs = f.read().split(manifest["play_separator"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    from transformers import PreTrainedTokenizerFast

    tok = train(args.vocab_size, args.min_frequency)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        model_max_length=512,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(args.out))
    cfg_path = args.out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # portable across transformers 4.x and 5.x
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"vocab {tok.get_vocab_size()} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
