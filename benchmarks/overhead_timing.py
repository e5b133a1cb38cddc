"""Timings of the overhead benchmark: per model call against ``euler`` (interleaved, median of paired ratios),
ComfyUI's fixed per-run cost, the samplers' own loop cost with a free model, and the recording overhead of
``record_sampling`` with the recorder's own hook cost (see ``benchmarks/overhead.py`` for the method).
"""
from __future__ import annotations

import time

from benchmarks.comfy_inprocess import pack_module
from benchmarks.harness import median, quartiles
from benchmarks.overhead_workloads import FixedNoise, Workload, sampler, timed_counting


def best_of(work: Workload, name: str, sigmas, best: int):
    """(wall, NFE, CPU) of the fastest of ``best`` back-to-back runs (min: robust to preemption spikes)."""
    runs = [timed_counting(work, name, sigmas) for _ in range(best)]
    return min(runs, key=lambda run: run[0])[:2] + (min(run[2] for run in runs),)


def per_call(work: Workload, names, steps: int, repeats: int, best: int, log):
    """{name: {...}}: median over interleaved repeats of the per-call wall-time ratio to euler (each side the
    best of ``best`` runs), its IQR, the same in CPU time, per-call ms and NFE."""
    grid = work.sigmas(steps)
    for name in ("euler",) + tuple(names):  # warm-up (first-call allocations, lazy imports)
        timed_counting(work, name, grid)
    results = {}
    euler_per_call = []
    euler_nfe = None
    for name in names:
        ratios, cpu_ratios, per_call_ms, nfe = [], [], [], None
        for repeat in range(repeats):
            order = ("euler", name) if repeat % 2 == 0 else (name, "euler")
            times = {who: best_of(work, who, grid, best) for who in order}
            (te, euler_nfe, ce), (ts, nfe, cs) = times["euler"], times[name]
            ratios.append((ts / nfe) / (te / euler_nfe))
            cpu_ratios.append((cs / nfe) / (ce / euler_nfe))
            per_call_ms.append(1e3 * ts / nfe)
            euler_per_call.append(1e3 * te / euler_nfe)
        low, high = quartiles(ratios)
        results[name] = dict(ratio=median(ratios), q1=low, q3=high, ms_per_call=median(per_call_ms),
                             cpu_ratio=median(cpu_ratios), nfe=nfe)
        log(f"  {work.name:>20} {name:<15} NFE {nfe:>3}  {median(per_call_ms):8.3f} ms/call  "
            f"×euler {results[name]['ratio']:.3f} [{low:.3f}, {high:.3f}]  CPU ×{results[name]['cpu_ratio']:.3f}")
    results["euler"] = dict(ratio=1.0, q1=1.0, q3=1.0, ms_per_call=median(euler_per_call), cpu_ratio=1.0,
                            nfe=euler_nfe)
    return results


def fixed_run_cost(work: Workload, steps: int, repeats: int, best: int) -> dict:
    """The per-run cost outside the model calls and sampler loop (guider setup, conds, model-load check),
    from euler at ``steps`` and ``4·steps``: ``T = fixed + NFE·per_call``."""
    short, long = work.sigmas(steps), work.sigmas(4 * steps)
    fixed, per = [], []
    for _ in range(repeats):
        (t1, n1, _), (t2, n2, _) = best_of(work, "euler", short, best), best_of(work, "euler", long, best)
        slope = (t2 - t1) / (n2 - n1)
        per.append(slope)
        fixed.append(t1 - n1 * slope)
    return dict(fixed_ms=1e3 * median(fixed), per_call_ms=1e3 * median(per))


class FreeModel:
    """A k-diffusion denoiser that costs (almost) nothing: isolates the samplers' own loop cost."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        return x * 0.5


def loop_cost(names, repeats: int, log) -> dict:
    """µs of sampler-loop work per model call with a free model on a [4, 3, 8, 8] latent, 16 steps, calling
    the sampler functions directly (ComfyUI's ``sample_euler`` and the pack's, as registered)."""
    import comfy.k_diffusion.sampling as k_sampling
    import torch

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1.0, 0.0, 17)
    functions = {name: getattr(k_sampling, f"sample_{name}") for name in ("euler",) + tuple(names)}

    def once(function):
        model = FreeModel()
        with torch.inference_mode():
            start = time.perf_counter()
            function(model, x, sigmas, extra_args={"seed": 0}, disable=True)
            return 1e6 * (time.perf_counter() - start) / model.calls

    samples = {name: [] for name in functions}
    for name, function in functions.items():
        once(function)
    for _ in range(repeats):
        for name, function in functions.items():
            samples[name].append(min(once(function) for _ in range(3)))
    result = {name: median(values) for name, values in samples.items()}
    log("  loop µs/call: " + ", ".join(f"{name} {value:.0f}" for name, value in result.items()))
    return result



def recording_overhead(work: Workload, names, steps: int, repeats: int, best: int, log):
    import torch

    diagnostics = pack_module("nodes.diagnostic_nodes")
    guider = work.plain_guider()
    sigmas = work.sigmas(steps)
    noise = FixedNoise(work.noise)

    def plain(smp):
        with torch.inference_mode():
            start = time.perf_counter()
            guider.sample(work.noise, work.latent, smp, sigmas, disable_pbar=True, seed=0)
            return time.perf_counter() - start

    def recorded(smp):
        with torch.inference_mode():
            start = time.perf_counter()
            _, _, trajectory = diagnostics.record_sampling(guider, smp, sigmas, {"samples": work.latent}, noise,
                                                           "bench", preview=False)
            return time.perf_counter() - start, trajectory.nfe

    results = {}
    for name in names:
        smp = sampler(name)
        plain(smp), recorded(smp)  # warm-up
        ratios, plain_ms, rec_ms, nfe = [], [], [], 0
        for repeat in range(repeats):
            if repeat % 2 == 0:
                tp = min(plain(smp) for _ in range(best))
                tr, nfe = min(recorded(smp) for _ in range(best))
            else:
                tr, nfe = min(recorded(smp) for _ in range(best))
                tp = min(plain(smp) for _ in range(best))
            ratios.append(tr / tp)
            plain_ms.append(1e3 * tp)
            rec_ms.append(1e3 * tr)
        low, high = quartiles(ratios)
        results[name] = dict(overhead=median(ratios) - 1, q1=low - 1, q3=high - 1, plain_ms=median(plain_ms),
                             recorded_ms=median(rec_ms), nfe=nfe, steps=steps)
        log(f"  {work.name:>20} {name:<10} plain {median(plain_ms):9.2f} ms  recorded {median(rec_ms):9.2f} ms  "
            f"overhead {100 * results[name]['overhead']:+.1f}% [{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]")
    return results


def recorder_cost(work: Workload, steps: int, repeats: int, log) -> dict:
    """µs the recorder's own hooks take (on_model_call, on_step per step; finish per run), fed directly with
    the workload's latent shape: the recording cost that does not depend on the model."""
    import torch

    trajectory = pack_module("diagnostics.recorder")
    x = work.noise.clone()
    denoised = x * 0.5
    sigmas = torch.linspace(1.0, 0.0, steps + 1)

    def once():
        recorder = trajectory.TrajectoryRecorder(True, sigmas)
        call = step = 0.0
        for i in range(steps):
            sigma = sigmas[i].expand(x.shape[0]).clone()
            d = denoised.clone()
            a = time.perf_counter()
            recorder.on_model_call(x, sigma, d)
            b = time.perf_counter()
            recorder.on_step(i, x, d)
            call, step = call + b - a, step + time.perf_counter() - b
        a = time.perf_counter()
        recorder.finish(x)
        return 1e6 * call / steps, 1e6 * step / steps, 1e6 * (time.perf_counter() - a)

    with torch.inference_mode():
        once()
        runs = [once() for _ in range(repeats)]
    result = dict(zip(("call_us", "step_us", "finish_us"), (median(v) for v in zip(*runs))))
    log(f"  {work.name:>20} recorder hooks: on_model_call {result['call_us']:.0f} µs, on_step {result['step_us']:.0f} µs, "
        f"finish {result['finish_us']:.0f} µs")
    return result

