"""Smoke test of the GPU check on the CPU (``--device cpu --quick``): the report has a row per sampler with a
numeric per-call overhead and host-sync counts, and fixed-step samplers do no host sync per step.

The sync count is a correctness property of the sampling loop (a host read of a tensor value stalls an
accelerator's queue), not a timing; timings are only checked to be numbers.
"""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import ADAPTIVE, QUICK_SAMPLERS  # noqa: E402  (constants only: no ComfyUI import)

pytestmark = pytest.mark.integration


def test_quick_gpu_check_on_cpu_counts_no_host_sync_in_fixed_step_loops(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| sampler |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(columns) and cells[0] not in ("sampler", "what"):
            rows[cells[0]] = dict(zip(columns, cells))
    assert {"euler", "recorder", *QUICK_SAMPLERS} <= set(rows), sorted(rows)
    for name in QUICK_SAMPLERS:
        row = rows[name]
        float(row["µs/call above euler"])
        per_step = float(row["host syncs per step"])
        int(row["syncs per run (setup)"])
        if name in ADAPTIVE:
            assert per_step <= 1.0, row  # the step-size controller's one read per attempt
        else:
            assert per_step == 0.0, row
    assert float(rows["recorder"]["host syncs per step"]) == 0.0
    assert "fit wall time (s)" in text and "reference NFE" in text
