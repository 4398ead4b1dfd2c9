#!/usr/bin/env python
"""Build the two bundled multiple-choice tasks from the held-out (``test``) Shakespeare plays.

The tasks are lm-evaluation-harness tasks (YAML + a ``custom_dataset`` loader + JSONL) under
``romer_aihwkit/bundled/tasks/shakespeare/``:

* ``shakespeare_line_end``: four lines of the script and the start of the next line as context;
  which of four endings (its last three words) completes the line? The three distractors are the
  endings of other lines of the same play.
* ``shakespeare_speaker``: twelve lines of the script before a speech as context; which of four
  characters speaks it? Each choice is the speaker heading followed by the speech's first line,
  as in the script, so the line's content tells who says it. Distractors are other characters of
  the same scene (topped up from the play), never the previous speaker: a character does not
  answer itself, and a small LM's bias to repeat the last name seen would otherwise decide.

A ``next line among four`` variant was tried first and dropped: the bundled models score at
chance on it, so it could not show what analog noise costs.

Both read only the ``test`` split (plays the bundled models never saw in training, disjoint from
the ``validation`` plays used for calibration). The construction is deterministic
(``random.Random(SEED)``); ``--check`` rebuilds in memory and compares with the shipped files.

Usage::

    python scripts/build_tasks.py            # writes the JSONL files
    python scripts/build_tasks.py --check    # exit 1 if the shipped files differ
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from romer_aihwkit.data import read_bundled_documents

OUT_DIR = Path(__file__).resolve().parent.parent / "romer_aihwkit" / "bundled" / "tasks" / "shakespeare"
SEED = 0
DOCS_PER_TASK = 500
CONTEXT_LINES = 12
"""Script lines (headings, blank lines, spoken lines) before the speech, as context of ``speaker``."""
LINE_END_CONTEXT = 4
"""Script lines before the line, as context of ``line_end``."""
ENDING_WORDS = 3
"""Words of a line's ending (the ``line_end`` choices)."""
MIN_LINE_CHARS = 12
HEADING = re.compile(r"[A-Z][A-Za-z'&\-]*(?: (?:of |and |the |de |le )?[A-Z][A-Za-z'&\-]*){0,3}\.")
"""A speaker heading: up to four capitalised words (``HERO.``, ``Lady Capulet.``, ``KING RICHARD.``)."""


def _is_heading(line: str) -> bool:
    return bool(HEADING.fullmatch(line))


def _stage_directions(lines: list[str]) -> set[int]:
    """Indices of the lines inside ``[...]`` stage directions (which may span lines)."""
    inside, out = False, set()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("["):
            inside = True
        if inside:
            out.add(i)
            if "]" in line:
                inside = False
    return out


def _spoken_lines(lines: list[str]) -> list[int]:
    """Indices of the spoken lines: not blank, not a heading, not a stage direction, long enough."""
    directions = _stage_directions(lines)
    return [i for i, line in enumerate(lines)
            if i not in directions and len(line.strip()) >= MIN_LINE_CHARS and not _is_heading(line.strip())]


def parse_play(text: str) -> tuple[list[str], list[dict]]:
    """The play's lines and its speeches ``{"speaker", "start", "scene"}`` (``start``: heading line)."""
    lines = text.split("\n")
    spoken = set(_spoken_lines(lines))
    speeches, scene = [], 0
    for i, line in enumerate(lines):
        if line.startswith("Scene ") or line.startswith("SCENE "):
            scene += 1
        if (_is_heading(line) and i >= CONTEXT_LINES and not lines[i - 1].strip() and i + 1 in spoken):
            speeches.append({"speaker": line[:-1], "start": i, "scene": scene})
    return lines, speeches


def _context(lines: list[str], end: int) -> str:
    """The ``CONTEXT_LINES`` lines before line ``end``, each ending with a newline."""
    return "".join(line + "\n" for line in lines[end - CONTEXT_LINES:end])


def line_end_docs(plays: list[str], rng: random.Random) -> list[dict]:
    candidates, parsed = [], []
    for play_index, text in enumerate(plays):
        lines = text.split("\n")
        spoken = _spoken_lines(lines)
        endings = {i: " ".join(lines[i].split()[-ENDING_WORDS:]) for i in spoken
                   if len(lines[i].split()) > ENDING_WORDS}
        candidates.extend((play_index, i) for i in spoken
                          if i >= LINE_END_CONTEXT and len(lines[i].split()) >= 2 * ENDING_WORDS)
        parsed.append((lines, endings))
    rng.shuffle(candidates)
    docs = []
    for play_index, i in candidates:
        lines, endings = parsed[play_index]
        words = lines[i].split()
        target = " ".join(words[-ENDING_WORDS:])
        pool = sorted({e for j, e in endings.items() if abs(j - i) > LINE_END_CONTEXT and e != target})
        choices = rng.sample(pool, 3) + [target]
        rng.shuffle(choices)
        context = "".join(line + "\n" for line in lines[i - LINE_END_CONTEXT:i]) + " ".join(words[:-ENDING_WORDS])
        docs.append({"context": context, "choices": choices, "label": choices.index(target)})
        if len(docs) == DOCS_PER_TASK:
            break
    return docs


def speaker_docs(plays: list[str], rng: random.Random) -> list[dict]:
    candidates = []
    parsed = [parse_play(text) for text in plays]
    for play_index, (_, speeches) in enumerate(parsed):
        candidates.extend((play_index, k) for k in range(1, len(speeches))
                          if speeches[k - 1]["speaker"] != speeches[k]["speaker"])
    rng.shuffle(candidates)
    docs = []
    for play_index, k in candidates:
        lines, speeches = parsed[play_index]
        speech = speeches[k]
        excluded = {speech["speaker"], speeches[k - 1]["speaker"]}
        in_scene = sorted({s["speaker"] for s in speeches if s["scene"] == speech["scene"]} - excluded)
        in_play = sorted({s["speaker"] for s in speeches} - excluded - set(in_scene))
        others = rng.sample(in_scene, min(3, len(in_scene)))
        others += rng.sample(in_play, 3 - len(others))
        first_line = lines[speech["start"] + 1].strip()
        choices = [f"{name}.\n{first_line}" for name in others + [speech["speaker"]]]
        rng.shuffle(choices)
        target = f"{speech['speaker']}.\n{first_line}"
        docs.append({"context": _context(lines, speech["start"]), "choices": choices,
                     "label": choices.index(target), "speaker": speech["speaker"],
                     "previous_speaker": speeches[k - 1]["speaker"]})
        if len(docs) == DOCS_PER_TASK:
            break
    return docs


def build() -> dict[str, str]:
    """File name -> JSONL text of every task."""
    plays = read_bundled_documents("test")
    out = {}
    for name, fn in (("line_end.jsonl", line_end_docs), ("speaker.jsonl", speaker_docs)):
        docs = fn(plays, random.Random(SEED))
        if len(docs) < DOCS_PER_TASK:
            raise SystemExit(f"{name}: only {len(docs)} documents could be built")
        out[name] = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, text in files.items() if not (OUT_DIR / n).is_file()
                 or (OUT_DIR / n).read_text(encoding="utf-8") != text]
        if stale:
            print(f"differ from a rebuild: {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{', '.join(files)}: identical to a rebuild")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT_DIR / name} ({text.count(chr(10))} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
