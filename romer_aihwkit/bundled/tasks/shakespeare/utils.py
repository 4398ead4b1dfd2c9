"""Loaders of the bundled Shakespeare tasks (lm-eval ``custom_dataset``): local JSONL, no network.

Built by ``scripts/build_tasks.py`` from the held-out ``test`` plays of the bundled corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _load(file_name: str) -> Any:
    import datasets

    path = HERE / file_name
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def load_line_end(**_: Any) -> Any:
    """``shakespeare_line_end``: context ending inside a line, four endings, the index of the true one."""
    return _load("line_end.jsonl")


def load_speaker(**_: Any) -> Any:
    """``shakespeare_speaker``: context, four ``SPEAKER.\\nfirst line`` choices, the true speaker's index."""
    return _load("speaker.jsonl")
