"""Smoke test of the memory benchmark: ``--quick`` runs in-process ComfyUI and writes its tables.

Benchmarks are scripts, not timed tests: nothing here checks a timing. It checks that every sampler run and the
recorder get a numeric memory row, and two memory properties the quick latents must show: a second euler run
allocates exactly what the first did (0 extra: the measurement is reproducible), and the recorder stays below
4 MiB on these small latents. The real-size figures are in docs/benchmark_memory.md.
"""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import QUICK_SAMPLERS, QUICK_SIZES  # noqa: E402  (constants only: no ComfyUI import)

pytestmark = pytest.mark.integration


def table_rows(text: str, heading: str) -> dict:
    """{first cell: cells} of the markdown table after ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}  # rows[0]: the header


def test_quick_memory_benchmark_reports_every_sampler_and_the_recorder(tmp_path):
    out = tmp_path / "memory.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--out", str(out)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    assert "--quick" in text and "commit `" in text  # the command and the commit are stated
    for label in QUICK_SIZES:
        rows = table_rows(text, f"## {label}:")
        assert set(rows) == {"euler", *QUICK_SAMPLERS, "recorder"}, rows
        for name, cells in rows.items():
            float(cells[1]), float(cells[2])  # MiB and latents are numbers
        assert float(rows["euler"][1]) == 0.0  # second euler run vs the first: exactly the same bytes
        assert float(rows["fs_euler"][2]) <= 0.0  # the same method as euler holds nothing more
        assert 0.0 < float(rows["recorder"][1]) < 4.0  # MiB on these small latents
    timing = table_rows(text, "## Per-call overhead")
    for name in QUICK_SAMPLERS:
        float(timing[name][3])  # µs per call above euler: a number
