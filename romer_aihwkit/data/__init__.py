"""Text data: the bundled Shakespeare corpus, tokenization into fixed blocks, batch handling.

The bundled corpus is split by play: ``train`` (tokenizer/model training), ``validation`` (the
bundled **calibration** set) and ``test`` (the bundled **evaluation** set). Calibration and
evaluation data are therefore disjoint by construction (different plays).
"""
from .blocks import (
    MAX_TEXT_BYTES,
    count_tokens,
    encode_documents,
    iter_model_batches,
    iter_token_batches,
    max_positions_of,
    max_text_bytes,
    same_text,
    text_blocks,
    text_size_limit,
    vocab_size_of,
)
from .corpus import (
    BUNDLED_SPLITS,
    CALIBRATION_SPLIT,
    EVALUATION_SPLIT,
    bundled_manifest,
    bundled_text_path,
    read_bundled_documents,
    read_bundled_text,
)

__all__ = [
    "MAX_TEXT_BYTES",
    "BUNDLED_SPLITS",
    "CALIBRATION_SPLIT",
    "EVALUATION_SPLIT",
    "bundled_manifest",
    "bundled_text_path",
    "calibration_and_eval_blocks",
    "count_tokens",
    "encode_documents",
    "iter_model_batches",
    "iter_token_batches",
    "max_positions_of",
    "max_text_bytes",
    "read_bundled_documents",
    "read_bundled_text",
    "same_text",
    "text_blocks",
    "text_size_limit",
    "vocab_size_of",
]


def calibration_and_eval_blocks(tokenizer=None, seq_len: int = 256, calib_blocks: int | None = 32,
                                eval_blocks: int | None = None):
    """``(calib, eval)`` token blocks from the bundled corpus: the ``validation`` split (calibration)
    and the ``test`` split (evaluation) — different plays, so disjoint by construction."""
    calib = text_blocks("bundled", tokenizer, seq_len=seq_len, split=CALIBRATION_SPLIT, max_blocks=calib_blocks)
    evals = text_blocks("bundled", tokenizer, seq_len=seq_len, split=EVALUATION_SPLIT, max_blocks=eval_blocks)
    return calib, evals
