"""report.md, the terminal summary table and the PNG plots, from hand-made results (no model runs)."""

from __future__ import annotations

import io
import json
import random

import pytest

from romer_aihwkit.evaluation import summarize_rows
from romer_aihwkit.evaluation.plots import model_slugs, plot_layer_loads, write_plots
from romer_aihwkit.evaluation.report import package_versions, print_summary, render_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _loads(rng, e=4, skew=0.0):
    raw = [1.0 + skew * (i == 0) + 0.2 * rng.random() for i in range(e)]
    return [x / sum(raw) for x in raw]


def make_results(methods=("none", "global", "romer"), times=(3600.0,), seeds=(0, 1, 2),
                 models=("/models/olmoe-tiny",)):
    """A results dict shaped like run_comparison's, rows carrying per-layer loads."""
    rng = random.Random(0)
    rows = []
    for model in models:
        for t in times:
            for method in methods:
                for seed in seeds:
                    base = {"none": 30.0, "global": 25.0, "romer": 20.0}.get(method, 22.0)
                    rows.append({
                        "model": model, "device": "pcm", "method": method, "t_inference": t, "seed": seed,
                        "ppl": base * (1 + 0.1 * (t > 3600)) + rng.random(), "load_cv": 0.3 + 0.1 * rng.random(),
                        "max_load_ratio": 1.5 + rng.random(), "router_fidelity": 0.8 + 0.1 * rng.random(),
                        "load_entropy": 0.9, "replaced_experts": 2 if method == "romer" else 0,
                        "digital_ppl": 12.5, "seconds": 1.0,
                        "layers": [{"load": _loads(rng, skew=1.0 if method == "none" else 0.2),
                                    "reference_load": _loads(rng)} for _ in range(2)],
                    })
    settings = {"models": list(models), "devices": ["pcm"], "methods": list(methods), "seeds": list(seeds),
                "t_inference": [None] if len(times) == 1 else list(times), "eval_text": "bundled",
                "calib_text": "bundled", "seq_len": 32, "eval_blocks": 2, "calib_blocks": 2, "batch_size": 8,
                "digital_ppl": {m: 12.5 for m in models}}
    results = {"settings": settings, "rows": [{k: v for k, v in r.items() if k != "layers"} for r in rows],
               "summary": summarize_rows(rows)}
    return results, rows


def test_report_has_tables_versions_and_settings(tmp_path):
    results, _ = make_results(times=(3600.0, 86400.0))
    path = write_report(results, tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "## How to read this" in text and "confidence interval" in text
    # one table per (model, device, t_inference), methods in the settings' order
    assert text.count("| method | ppl ± CI95 | ppl std |") == 2
    assert "t_inference = 1 h" in text and "t_inference = 1 d" in text
    table = text[text.index("| method |"):].split("\n\n")[0].splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["none", "global", "romer"]
    romer = next(e for e in results["summary"] if e["method"] == "romer" and e["t_inference"] == 3600.0)
    assert f"{romer['ppl']:.2f} ± {romer['ppl_ci95']:.2f}" in text
    assert "Digital perplexity: **12.50**" in text
    assert "| 3 |" in text  # n seeds
    for name, version in package_versions().items():
        assert f"- {name}: {version}" in text
    assert {"python", "torch", "transformers", "aihwkit", "romer_aihwkit"} <= set(package_versions())
    assert "- `seq_len`: 32" in text and "- `methods`: none, global, romer" in text
    assert not list(tmp_path.glob(".*"))  # atomic write left no temporary file


def test_report_relative_change_and_missing_values():
    results, _ = make_results(seeds=(0,))  # one seed: no CI
    text = render_report(results)
    assert "± nan" not in text.lower()
    none = next(e for e in results["summary"] if e["method"] == "none")
    romer = next(e for e in results["summary"] if e["method"] == "romer")
    delta = 100 * (romer["ppl"] - none["ppl"]) / none["ppl"]
    assert abs(delta) >= 1 and f"{delta:+.1f}%" in text


def test_print_summary_rich_table():
    from rich.console import Console

    results, _ = make_results()
    buf = io.StringIO()
    print_summary(results, Console(file=buf, width=120, color_system=None))
    out = buf.getvalue()
    assert "olmoe-tiny" in out and "digital ppl 12.50" in out
    for method in ("none", "global", "romer"):
        assert method in out
    buf = io.StringIO()
    print_summary({"settings": {}, "rows": [], "summary": []}, Console(file=buf, width=80))
    assert "no finished rows" in buf.getvalue()


def test_plots_are_written_as_png(tmp_path):
    results, rows = make_results(times=(3600.0, 86400.0))
    paths = write_plots(results, tmp_path, rows=rows)
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "expert_load_olmoe-tiny_pcm_t3600.png", "expert_load_olmoe-tiny_pcm_t86400.png",
        "ppl_by_method_olmoe-tiny_pcm.png", "ppl_vs_drift_olmoe-tiny_pcm.png"])
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not list(tmp_path.glob(".*"))


def test_plots_read_layer_loads_from_rows_jsonl(tmp_path):
    results, rows = make_results()
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = {p.name for p in write_plots(results, tmp_path)}
    assert names == {"expert_load_olmoe-tiny_pcm.png", "ppl_by_method_olmoe-tiny_pcm.png"}  # one drift time
    text = write_report(results, tmp_path, plots=[tmp_path / n for n in sorted(names)]).read_text()
    assert "![expert_load_olmoe-tiny_pcm](expert_load_olmoe-tiny_pcm.png)" in text


def test_load_plot_skipped_without_romer(tmp_path):
    results, rows = make_results(methods=("none", "global"))
    paths = write_plots(results, tmp_path, rows=rows)
    assert [p.name for p in paths] == ["ppl_by_method_olmoe-tiny_pcm.png"]
    assert plot_layer_loads(rows, "/models/olmoe-tiny", "pcm", 3600.0, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    # rows without per-layer loads (results.json only): skipped too, not an error
    results, _ = make_results()
    assert [p.name for p in write_plots(results, tmp_path / "empty")] == ["ppl_by_method_olmoe-tiny_pcm.png"]


def test_model_slugs_are_unique():
    slugs = model_slugs(["/a/olmoe-tiny", "/b/olmoe-tiny", "Qwen/Qwen1.5-MoE-A2.7B", "qwen2moe-tiny"])
    assert len(set(slugs.values())) == 4
    assert slugs["Qwen/Qwen1.5-MoE-A2.7B"] == "Qwen1.5-MoE-A2.7B"
    assert slugs["qwen2moe-tiny"] == "qwen2moe-tiny"


@pytest.mark.parametrize("n_models", [2])
def test_plots_per_model(tmp_path, n_models):
    results, rows = make_results(models=tuple(f"/m/model{i}" for i in range(n_models)))
    paths = write_plots(results, tmp_path, rows=rows)
    assert len(paths) == 2 * n_models
