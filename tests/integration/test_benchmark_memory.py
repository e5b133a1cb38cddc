"""Smoke test of the memory benchmark: ``--quick`` runs in-process ComfyUI and writes its report and figures.

Benchmarks are scripts, not timed tests: nothing here checks a timing. It checks that every sampler run and the
recorder get a memory row, and two memory properties the quick latents must show: a second euler run
allocates exactly what the first did (0 extra: the measurement is reproducible), and the recorder stays below
4 MiB on these small latents. The real-size figures are in docs/benchmark_memory.md.
"""
import math

import pytest

from benchmarks.memory import QUICK_SAMPLERS, QUICK_SIZES  # constants only: no ComfyUI import
from tests.integration.benchmark_runs import results, run_ok

pytestmark = pytest.mark.integration


def test_quick_memory_benchmark_reports_every_sampler_and_the_recorder(tmp_path):
    out = tmp_path / "memory.md"
    run_ok("memory.py", "--quick", "--out", out, "--results-dir", tmp_path, timeout=600)
    assert out.read_text(encoding="utf-8").startswith("# Memory and per-call overhead")
    figures = results(tmp_path / "memory.json")
    assert figures["mode"] == "quick" and figures["environment"]["commit"] != "unknown"
    assert set(figures["memory"]) == set(QUICK_SIZES)
    for label, rows in figures["memory"].items():
        by_name = {row["name"]: row for row in rows}
        assert set(by_name) == {"euler", *QUICK_SAMPLERS, "recorder"}, label
        assert by_name["euler"]["extra"] == 0  # second euler run vs the first: exactly the same bytes
        assert by_name["fs_euler"]["extra"] <= 0  # the same method as euler holds nothing more
        assert 0 < by_name["recorder"]["extra"] < 4 * 2 ** 20, by_name["recorder"]  # bytes, small latents
        assert not by_name["recorder"]["flag"]
    for name in QUICK_SAMPLERS:
        assert math.isfinite(figures["per_call"][name]["extra_us"]), figures["per_call"][name]
