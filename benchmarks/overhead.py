"""Sampler-loop and recording overhead of the FlowScope samplers against ComfyUI's ``euler``.

Everything runs in one process through ComfyUI's real sampling path (``CFGGuider.sample`` with samplers
from ``comfy.samplers.sampler_object``), see :mod:`benchmarks.comfy_inprocess`.

* **Per model call**: wall time of one sampling run divided by its NFE (counted model calls), for every
  ``fs_`` sampler and for ``euler`` at the same step count on the same model, noise and conditioning
  (CFG 3, so every model call is ComfyUI's batched cond+uncond call). Runs are interleaved
  (``euler, fs_x, fs_x, euler, …``: the order alternates every repeat; each side of a repeat is the best of
  ``--best`` back-to-back runs) and the reported ratio is the median of the per-repeat ratios; the same in
  process CPU time as a cross-check. Also: the samplers' own loop cost with a free model (µs per call) and
  the fixed per-run cost of ComfyUI's sampling path, which a per-call ratio spreads over NFE calls.
* **Recording**: ``record_sampling`` (the Record Trajectory node, scalars only) against a plain
  ``CFGGuider.sample`` with the same sampler, interleaved, median of paired ratios.
* **Memory**: what the recorder retains (its buffers and per-step/per-call series, and the finished
  ``Trajectory``) counted tensor by tensor (unique storages) against the step count, on a small and a large
  latent, plus the process RSS growth as a rough check; and per sampler, the memory it holds while the model
  runs (glibc's live-allocation counter at each model call; on CUDA ``torch.cuda.max_memory_allocated``).

Usage::

    python benchmarks/overhead.py            # full run, writes docs/benchmark_overhead.md (~10-15 min, 2 cores)
    python benchmarks/overhead.py --quick --out /tmp/overhead.md   # < 2 min smoke run (CI)

The measurements live in ``overhead_timing.py`` (per call, loop cost, recording) and ``overhead_memory.py``
(recorder memory, memory held per sampler), the workloads in ``overhead_workloads.py``, the report in
``overhead_report.py``; all figures also go to ``benchmark-results/<report name>.json``.

Benchmarks are scripts, not timed tests; CPU timings on a shared machine are noisy, hence the medians.
"""
from __future__ import annotations
from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.comfy_inprocess import boot, pack_module  # noqa: E402
from benchmarks.harness import RESULTS_DIR, write_report  # noqa: E402
from benchmarks.overhead_memory import held_memory, keep_freed_memory, recorder_memory  # noqa: E402
from benchmarks.overhead_report import machine, render  # noqa: E402
from benchmarks.overhead_timing import (fixed_run_cost, loop_cost, per_call, recorder_cost,  # noqa: E402
                                        recording_overhead)
from benchmarks.overhead_workloads import (BUILTIN_REFERENCES, DEMO_MODELS, LARGE, QUICK_SAMPLERS,  # noqa: E402
                                           RECORDING_REPEATS, Workload, large_steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 2 min smoke run (few samplers, small latent)")
    parser.add_argument("--out", default=None, help="markdown output (default docs/benchmark_overhead.md)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats on the demo models (default 5 quick, 9 full; large latent: 5)")
    parser.add_argument("--best", type=int, default=3,
                        help="each side of a repeat is the fastest of this many back-to-back runs (at most 2 on the large latent)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine more threads oversubscribe "
                             "the cores and make timings erratic)")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                        help="where the figures go as JSON (default benchmark-results/, ignored by git)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc at its defaults (timings then include page faults of large temporaries)")
    args = parser.parse_args(argv)
    args.kept_freed_memory = False if args.default_allocator else keep_freed_memory()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.time()
    out = pathlib.Path(args.out) if args.out else ROOT / "docs" / "benchmark_overhead.md"
    args.out_display = args.out or "docs/benchmark_overhead.md"
    args.repeats = args.repeats or (5 if args.quick else 9)

    def log(message):
        print(message, flush=True)

    boot()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # as `main.py --disable-progress-bar`; record_sampling reads it
    samplers_module = pack_module("samplers")
    names = QUICK_SAMPLERS if args.quick else tuple(samplers_module.SAMPLERS) + BUILTIN_REFERENCES
    info = machine()
    log(f"machine: {info}")

    log("sampler loop cost with a free model")
    loop = loop_cost(tuple(n for n in names if n not in BUILTIN_REFERENCES), args.repeats, log)  # needs a real model
    per_call_results = {}
    models = ("digits-flow",) if args.quick else DEMO_MODELS
    fixed = None
    for model in models:
        log(f"per-call timing on {model}")
        work = Workload(model, batch=4)
        per_call_results[model] = per_call(work, names, args.steps, args.repeats, args.best, log)
        if fixed is None:
            fixed = fixed_run_cost(work, args.steps, args.repeats, args.best)
            log(f"  fixed per-run cost {fixed['fixed_ms']:.1f} ms, {fixed['per_call_ms']:.2f} ms per euler call")
    if not args.quick:
        log(f"per-call timing on {LARGE}")
        per_call_results[LARGE] = per_call(Workload(LARGE, batch=1), names, large_steps(args), 5, min(args.best, 2), log)

    recording = {}
    record_names = ("euler", "fs_rk4")
    log("recording overhead")
    hooks = {}
    work = Workload("digits-flow", batch=4)
    recording["digits-flow"] = recording_overhead(work, record_names, args.steps, RECORDING_REPEATS * args.repeats,
                                                  args.best, log)
    hooks["digits-flow"] = recorder_cost(work, args.steps, 2 * args.repeats, log)
    if not args.quick:
        work = Workload(LARGE, batch=1)
        recording[LARGE] = recording_overhead(work, record_names, large_steps(args), 9, min(args.best, 2), log)
        hooks[LARGE] = recorder_cost(work, large_steps(args), 5, log)

    log("recorder memory")
    memory = recorder_memory(Workload("analytic", batch=4), "euler", (10, 50) if args.quick else (10, 50, 200), log)
    if not args.quick:
        memory += recorder_memory(Workload(LARGE, batch=1), "euler", (10, 50, 200), log)

    peaks = []
    if not args.quick:
        log("memory held per sampler")
        peaks = held_memory(Workload(LARGE, batch=1), names, large_steps(args), log)

    text = render(args, info, per_call_results, recording, hooks, memory, peaks, loop, fixed,
                  time.time() - started)
    figures = dict(mode="quick" if args.quick else "full", machine=info, steps=args.steps, loop_us=loop,
                   fixed_run_cost=fixed, per_call=per_call_results, recording=recording, recorder_hooks=hooks,
                   recorder_memory=memory, held_memory=peaks)
    raw = write_report(out, text, figures, args.results_dir)
    log(f"wrote {out} and {raw} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
