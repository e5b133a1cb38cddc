"""CI smoke test of the quality benchmark: the quick mode runs through ComfyUI in-process and writes its table."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_quick_quality_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "quality.md"
    completed = subprocess.run([sys.executable, "benchmarks/quality.py", "--quick", "--out", str(out)], cwd=ROOT,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = out.read_text()
    assert "| problem | NFE | best built-in" in text
    for problem in ("analytic", "digits-flow", "digits-diffusion"):
        assert f"| {problem} | 4 |" in text and f"| {problem} | 8 |" in text
    data = json.loads(out.with_suffix(".json").read_text())
    rows = [row for row in data["results"] if row.get("budget")]
    assert all(row["nfe"] <= row["budget"] for row in rows)
    assert {row["family"] for row in rows} == {"built-in", "FlowScope"}
    assert out.with_suffix(".png").stat().st_size > 10_000
