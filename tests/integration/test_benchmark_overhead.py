"""Smoke test of the overhead benchmark: ``--quick`` runs in-process ComfyUI, writes its report and its figures
(JSON), and the figures are consistent measurements.

Benchmarks are scripts, not timed tests: no timing target is checked (the figures are in
docs/benchmark_overhead.md). What is checked: every quick sampler is timed against euler with the model calls
its method makes, ``fs_euler`` (the same arithmetic as ``euler``) measures within a factor 2 of it (a broken
pairing or timer would not), and the recorder's memory shows the property the report states — latent-sized
buffers independent of the step count, series growing by far less than a latent per step.
"""
import pytest

from benchmarks.overhead_workloads import QUICK_SAMPLERS  # constants only: no ComfyUI import
from tests.integration.benchmark_runs import results, run_ok

pytestmark = pytest.mark.integration

STEPS = 16


def test_quick_overhead_benchmark_measures_per_call_ratios_and_recorder_memory(tmp_path):
    out = tmp_path / "overhead.md"
    run_ok("overhead.py", "--quick", "--out", out, "--results-dir", tmp_path, "--steps", STEPS, timeout=600)
    assert out.read_text(encoding="utf-8").startswith("# Overhead benchmark")
    figures = results(tmp_path / "overhead.json")
    assert figures["mode"] == "quick" and figures["steps"] == STEPS

    per_call = figures["per_call"]["digits-flow"]
    assert set(per_call) == {"euler", *QUICK_SAMPLERS}
    nfe = {name: row["nfe"] for name, row in per_call.items()}
    assert nfe["euler"] == nfe["fs_euler"] == STEPS  # one model call per step
    assert nfe["fs_rk4"] == 4 * STEPS and nfe["fs_heun"] in (2 * STEPS - 1, 2 * STEPS)
    assert STEPS < nfe["fs_ab3"] < 2 * STEPS  # one call per step after its RK4 warm-up steps
    assert 0.5 < per_call["fs_euler"]["ratio"] < 2.0, per_call["fs_euler"]
    assert all(figures["loop_us"][name] > 0 for name in ("euler", *QUICK_SAMPLERS))

    for name, row in figures["recording"]["digits-flow"].items():
        assert row["steps"] == STEPS and row["plain_ms"] > 0 and row["recorded_ms"] > 0, (name, row)
    assert figures["recording"]["digits-flow"]["euler"]["nfe"] == STEPS

    memory = sorted(figures["recorder_memory"], key=lambda row: row["steps"])
    assert [row["steps"] for row in memory] == [10, 50]
    first, last = memory
    assert first["buffers"] == last["buffers"] and first["working"] == last["working"]  # not O(steps × latent)
    growth = (last["series"] - first["series"]) / (last["steps"] - first["steps"])
    assert 0 < growth < first["latent_bytes"], memory  # per-step scalars, far below one latent per step
