"""CI smoke test of the quality benchmark: the quick mode runs through ComfyUI in-process and writes its table, and
runs of disjoint problems merge into the same table."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def quality(*args):
    return subprocess.run([sys.executable, "benchmarks/quality.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "quality.md"
    completed = quality("--quick", "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_quick_quality_benchmark_writes_its_table(quick_run):
    text = quick_run.read_text()
    assert "| problem | NFE | best built-in" in text
    for problem in ("analytic", "digits-flow", "digits-diffusion"):
        assert f"| {problem} | 4 |" in text and f"| {problem} | 8 |" in text
    data = json.loads(quick_run.with_suffix(".json").read_text())
    assert data["mode"] == "quick" and data["command"] == "python benchmarks/quality.py --quick"
    rows = [row for row in data["results"] if row.get("budget")]
    assert all(row["nfe"] <= row["budget"] for row in rows)
    assert {row["family"] for row in rows} == {"built-in", "FlowScope"}
    assert quick_run.with_suffix(".png").stat().st_size > 10_000


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and " | " in line[2:]]


def test_runs_of_disjoint_problems_merge_into_the_same_table(quick_run, tmp_path):
    data = json.loads(quick_run.with_suffix(".json").read_text())
    parts = []
    for index, problems in enumerate((["analytic"], ["digits-flow", "digits-diffusion"])):
        part = tmp_path / f"part{index}.json"
        part.write_text(json.dumps({
            "command": f"part {index}", "mode": "quick",
            "references": {name: data["references"][name] for name in problems},
            "results": [row for row in data["results"] if row["problem"] in problems]}))
        parts.append(part)
    merged = tmp_path / "merged.md"
    completed = quality("--quick", "--merge", *parts, "--out", merged)
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = merged.read_text()
    assert "Command: `part 0 + part 1 (parts merged with --merge)`" in text
    assert table_rows(text) == table_rows(quick_run.read_text())
    repeated = quality("--quick", "--merge", parts[0], parts[0], "--out", tmp_path / "twice.md")
    assert repeated.returncode != 0 and "repeats the problems ['analytic']" in repeated.stderr
    standard = quality("--standard", "--merge", parts[0], "--out", tmp_path / "other.md")
    assert standard.returncode != 0 and "is a 'quick' run, not 'standard'" in standard.stderr
