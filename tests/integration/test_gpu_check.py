"""Smoke test of the GPU check on the CPU (``--device cpu --quick``): every sampler gets a per-call overhead and
host-sync counts, and fixed-step samplers do no host sync per step.

The sync count is a correctness property of the sampling loop (a host read of a tensor value stalls an
accelerator's queue), not a timing; timings are only checked to be numbers.
"""
import math

import pytest

from benchmarks.gpu_check import ADAPTIVE, QUICK_SAMPLERS  # constants only: no ComfyUI import
from tests.integration.benchmark_runs import ROOT, results, run_ok

pytestmark = pytest.mark.integration


def test_quick_gpu_check_on_cpu_counts_no_host_sync_in_fixed_step_loops(tmp_path):
    out = tmp_path / "gpu_check.md"
    run_ok("gpu_check.sh", "--device", "cpu", "--quick", "--out", out, "--results-dir", tmp_path,
           command=["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], timeout=600)
    assert out.read_text(encoding="utf-8").startswith("# GPU check")
    figures = results(tmp_path / "gpu_check.json")
    syncs, timing = figures["syncs"], figures["per_call"]
    assert {"euler", "recorder", *QUICK_SAMPLERS} <= set(syncs), sorted(syncs)
    for name in QUICK_SAMPLERS:
        assert math.isfinite(timing[name]["extra_us"]), timing[name]
        assert isinstance(syncs[name]["per_run"], int), syncs[name]
        if name in ADAPTIVE:
            assert syncs[name]["per_step"] <= 1.0, syncs[name]  # the step-size controller's one read per attempt
        else:
            assert syncs[name]["per_step"] == 0.0, syncs[name]
    assert syncs["recorder"]["per_step"] == 0.0
    assert figures["fit"]["seconds"] > 0 and figures["fit"]["reference_nfe"] > 0
