"""Smoke test of the overhead benchmark: the quick mode runs in-process ComfyUI and writes its table.

Benchmarks are scripts, not timed tests: nothing here checks a timing or a ratio, only that the script
works end to end and produces the documented table (the figures are in docs/benchmark_overhead.md).
"""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_quick_overhead_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "overhead.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--out", str(out)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "| sampler | × euler, digits-flow |" in text
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and line.count("|") > 2}
    assert "euler" in rows and "fs_rk4" in rows
    ratio = rows["fs_rk4"].split("|")[2].strip().split()[0]
    assert float(ratio) > 0  # a number, not a placeholder
    assert "## Recording overhead" in text and "## Recorder memory vs steps" in text
    assert "--quick" in text  # the command that produced it is stated
