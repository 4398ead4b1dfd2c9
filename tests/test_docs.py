"""The docs' generated tables match the committed result files, and the README stays a front door."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_tables_are_up_to_date():
    out = subprocess.run([sys.executable, "scripts/render_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_render_refuses_commands_other_than_the_table_scripts(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- generated: python -c print(1) -->\n<!-- /generated -->\n")
    out = subprocess.run([sys.executable, "scripts/render_docs.py", "--check", str(bad)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "only" in (out.stdout + out.stderr)


def test_docs_links_resolve():
    import re

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(((?!https?://|#)[^)#\s]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
