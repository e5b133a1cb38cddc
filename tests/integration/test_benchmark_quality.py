"""CI smoke test of the quality benchmark: the quick mode runs through ComfyUI in-process and writes its report,
plot, summary and full results; runs of disjoint problems merge into the same summary; the published summaries
regenerate the published tables."""
import json
import pathlib
import shutil
import sys

import pytest

from tests.integration.benchmark_runs import ROOT, results, run_benchmark, run_ok

pytestmark = pytest.mark.integration


def cells(run) -> dict:
    """{(problem, budget, family): (sampler, scheduler, rms_error)} of the best row per cell, as the tables read it."""
    from benchmarks.quality_report import best_rows

    return {key: (row["sampler"], row["scheduler"], row["rms_error"]) for key, row in best_rows(run["results"]).items()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    run_ok("quality.py", "--quick", "--out", folder / "quality.md", "--results-dir", folder / "raw")
    return folder


def test_quick_quality_benchmark_writes_its_results(quick_run):
    summary, full = results(quick_run / "quality.json"), results(quick_run / "raw" / "quality.json")
    assert summary["mode"] == full["mode"] == "quick"
    assert summary["command"] == "python benchmarks/quality.py --quick"
    rows = [row for row in full["results"] if row.get("budget")]
    assert all(row["nfe"] <= row["budget"] for row in rows)
    assert {row["family"] for row in rows} == {"built-in", "FlowScope"}
    # the pilot-based contenders run at every budget (a failure is logged, not tabled: it would go unseen)
    for scheduler in ("fs_optimized", "fs_trajectory_adaptive", "fs_fitted_schedule", "fs_fitted_refined"):
        assert {(row["problem"], row["budget"]) for row in rows if row["scheduler"] == scheduler} == {
            (p, b) for p in ("analytic", "digits-flow", "digits-diffusion") for b in (4, 8)}, scheduler
    # every problem × budget × family cell has a best row, and the summary keeps exactly what the tables need
    problems = {"analytic", "digits-flow", "digits-diffusion"}
    assert set(cells(full)) == {(p, b, f) for p in problems for b in (4, 8) for f in ("built-in", "FlowScope")}
    assert cells(summary) == cells(full)
    assert len(summary["results"]) < len(full["results"])
    assert set(summary["references"]) == problems and all(ref["nfe"] > 0 for ref in summary["references"].values())
    assert (quick_run / "quality.png").stat().st_size > 10_000


def test_runs_of_disjoint_problems_merge_into_the_same_table(quick_run, tmp_path):
    data = results(quick_run / "raw" / "quality.json")
    parts = []
    for index, problems in enumerate((["analytic"], ["digits-flow", "digits-diffusion"])):
        part = tmp_path / f"part{index}.json"
        part.write_text(json.dumps({**data, "command": f"part {index}",
                                    "references": {name: data["references"][name] for name in problems},
                                    "results": [row for row in data["results"] if row["problem"] in problems]}))
        parts.append(part)
    completed = run_benchmark("quality.py", "--quick", "--merge", *parts, "--out", tmp_path / "merged.md",
                              "--results-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    merged = results(tmp_path / "merged.json")
    assert merged["command"] == "part 0 + part 1 (parts merged with --merge)"
    assert cells(merged) == cells(data)
    repeated = run_benchmark("quality.py", "--quick", "--merge", parts[0], parts[0], "--out", tmp_path / "twice.md",
                             "--results-dir", tmp_path)
    assert repeated.returncode != 0 and "repeats the problems ['analytic']" in repeated.stderr
    standard = run_benchmark("quality.py", "--standard", "--merge", parts[0], "--out", tmp_path / "other.md",
                             "--results-dir", tmp_path)
    assert standard.returncode != 0 and "is a 'quick' run, not 'standard'" in standard.stderr


@pytest.mark.parametrize("name", ["benchmark_quality", "benchmark_dropdown"])
def test_published_summary_regenerates_the_published_tables(tmp_path, name):
    for suffix in (".json", ".md"):
        shutil.copy(ROOT / "docs" / f"{name}{suffix}", tmp_path)
    published = (ROOT / "docs" / f"{name}.md").read_text()
    run_ok("quality_report.py", tmp_path / f"{name}.json", command=[sys.executable, "-m", "benchmarks.quality_report"])
    assert (tmp_path / f"{name}.md").read_text() == published
    assert results(tmp_path / f"{name}.json") == results(ROOT / "docs" / f"{name}.json")
    assert (ROOT / "docs" / f"{name}.json").stat().st_size < 100_000
