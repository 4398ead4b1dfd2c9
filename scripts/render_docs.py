"""Fill the generated tables of the docs from the committed result files (never paste numbers).

A markdown file marks a generated block with

    <!-- generated: python scripts/results_table.py docs/results/compare/results.json --paired-vs global -->
    ...table...
    <!-- /generated -->

and this script replaces what is between the two markers with the output of the command (run from
the repository root with this Python). ``--check`` only reports stale blocks (exit 1), for tests.

Run: python scripts/render_docs.py [--check] [FILE.md ...]   (default: README.md and docs/*.md)
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- generated: (?P<cmd>.+?) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)
ALLOWED = ("scripts/results_table.py", "benchmarks/real_shapes_table.py", "benchmarks/memory_estimate.py")


def run(command: str) -> str:
    args = shlex.split(command)
    if len(args) < 2 or args[0] != "python" or args[1] not in ALLOWED:
        raise SystemExit(f"generated block runs {command!r}: only `python <one of {', '.join(ALLOWED)}> ...` is allowed")
    out = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"`{command}` failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip() + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + run(m.group("cmd")) + m.group(4), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = parser.parse_args()
    files = [Path(f).resolve() for f in args.files] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = []
    for path in files:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("stale generated blocks in: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        sys.exit(1)
    print(("checked " if args.check else "rendered ") + ", ".join(str(p.relative_to(ROOT)) for p in files))


if __name__ == "__main__":
    main()
