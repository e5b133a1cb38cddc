"""GPU check: per-call overhead of every ``fs_`` sampler vs ``euler`` around a real-architecture model, host
syncs per step, recorder overhead and the Fitted Solver's fit time; writes a markdown report.

Model: the tiny Flux-architecture model of ``tests/matrix/families.py`` (``build_family("flux")``: ComfyUI's own
``comfy.ldm.flux`` classes, shrunken in width and depth, weights in bf16 on CUDA) at a Flux 1024² latent
(16×128×128; ``--quick``: the family's own small latent); where that module is missing, the ChannelMix model
of :mod:`benchmarks.memory` (said so in the report). Every run is ComfyUI's real path: the registered dropdown
sampler (``sampler_object`` / ``KSAMPLER`` of ``comfy.k_diffusion.sampling.sample_<name>``) sampled by
``CFGGuider.sample`` as SamplerCustomAdvanced calls it, CFG 1.

* Per-call overhead: wall time per model call minus euler's (``torch.cuda.synchronize`` around each run;
  ComfyUI's fixed cost per run removed before dividing by the NFE), median of interleaved repeats
  (:func:`benchmarks.memory.per_call_overhead`).
* Host syncs: :class:`SyncCounter`, a ``TorchFunctionMode`` counting host reads of tensor values
  (``item``, ``tolist``, ``__bool__``/``__float__``/``__int__``/``__index__``/``__format__``, ``numpy``,
  ``nonzero``, ``equal``, ``allclose``, boolean-mask indexing, ``.cpu()``; on CUDA also ``.to`` the CPU), so it
  also works on the CPU; on CUDA ``torch.cuda.set_sync_debug_mode("warn")`` warnings are counted too. Each read
  is attributed to the innermost frame in the pack (sampler/recorder) or in ComfyUI/the model, and to the phase
  of the run: "loop" = inside the sampler after its first model call, else per run (validation, ComfyUI's
  setup, the recorder's finish). Per step = the pack's loop reads / grid steps (adaptive samplers: / step attempts, from their
  ``AdaptiveStats``). The count runs the accelerator code path: on the CPU ``fs_secant`` computes its per-sample
  coefficients in Python floats by design (``HOST_COEFFICIENT_DEVICES``), which the count switches off.
* Recorder: ``record_sampling`` around euler vs plain euler, µs per model call and host syncs per step.
* Fitted Solver: wall time of the FlowScope · Fitted Solver node's fit (``solver_fit_plan``: data base, order 3,
  history 8, reference rtol 1e-5; ``--quick`` 1e-3) at 8 steps on a batch-1 pilot.

Run ``bash benchmarks/gpu_check.sh [--device cpu|cuda] [--quick] [--out PATH]``.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import pathlib
import statistics
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import memory  # noqa: E402
from benchmarks.comfy_inprocess import boot, pack_module  # noqa: E402

QUICK_SAMPLERS = ("fs_euler", "fs_rk4", "fs_ab2", "fs_secant", "fs_dopri5")
ADAPTIVE = ("fs_bosh3", "fs_dopri5")
SYNC_METHODS = {"__bool__", "__float__", "__int__", "__index__", "__complex__", "__format__", "__array__", "item",
                "tolist", "numpy", "nonzero", "argwhere", "equal", "allclose", "unique", "masked_select"}


class RunState:
    """Phase of a sampling run, from ComfyUI wrappers on the guider: inside the sampler, model calls so far."""

    def __init__(self, guider):
        import comfy.patcher_extension as ext

        self.in_sampler, self.calls = False, 0

        def sampler_sample(executor, *args, **kwargs):
            self.in_sampler = True
            try:
                return executor(*args, **kwargs)
            finally:
                self.in_sampler = False

        def predict_noise(executor, *args, **kwargs):
            self.calls += 1
            return executor(*args, **kwargs)

        for kind, fn in ((ext.WrappersMP.SAMPLER_SAMPLE, sampler_sample),
                         (ext.WrappersMP.PREDICT_NOISE, predict_noise)):
            ext.add_wrapper_with_key(kind, "flowscope_gpu_check", fn, guider.model_options, is_model_options=True)

    def phase(self) -> str:
        return "loop" if self.in_sampler and self.calls > 0 else "run"


def _owner(frame):
    """(owner, location) of the innermost pack ("pack") or ComfyUI/model ("comfy") frame."""
    return next(memory.known_frames(frame), ("other", "?"))


def sync_counter(state: RunState, device: str):
    import torch
    from torch.overrides import TorchFunctionMode

    class SyncCounter(TorchFunctionMode):
        """Counts host reads of tensor values by (phase, owner) and the pack's loop reads by location."""

        def __init__(self):
            super().__init__()
            self.counts, self.where, self.comfy_where = (collections.Counter() for _ in range(3))

        def record(self, frame, what):
            owner, where = _owner(frame)
            self.counts[(state.phase(), owner)] += 1
            if state.phase() == "loop":
                (self.where if owner == "pack" else self.comfy_where)[f"{where} ({what})"] += 1

        def host_read(self, name, args, kwargs):
            """What ``name(*args)`` reads to the host, or None."""
            first = args[0] if args else None
            if not isinstance(first, torch.Tensor) or (device == "cuda" and first.device.type == "cpu"):
                return None
            if name in SYNC_METHODS or name == "cpu":
                return name
            if name == "to" and device == "cuda" and "cpu" in map(str, (*args[1:], *kwargs.values())):
                return name  # on the CPU, .to(device=x.device) cannot be told apart from a copy to the host
            if name == "__getitem__" and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
                return "mask index"
            return None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            what = self.host_read(getattr(func, "__name__", ""), args, kwargs)
            if what is not None:
                self.record(sys._getframe(1), what)
            return func(*args, **kwargs)

        def cuda_warning(self, message, *args, **kwargs):
            if "synchronizing CUDA operation" in str(message):  # torch.cuda.set_sync_debug_mode("warn")
                self.counts[(state.phase(), "cuda:" + _owner(sys._getframe(1))[0])] += 1

        def __enter__(self):
            if device == "cuda":  # the driver-level check, beside the portable count
                self._warnings = warnings.catch_warnings()
                self._warnings.__enter__()
                warnings.simplefilter("always")
                warnings.showwarning = self.cuda_warning
                torch.cuda.set_sync_debug_mode("warn")
            return super().__enter__()

        def __exit__(self, *exc):
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
                self._warnings.__exit__(*exc)
            return super().__exit__(*exc)

    return SyncCounter()


def count_syncs(work, name: str, steps: int, device: str, record: bool = False) -> dict:
    """Host syncs of one run of ``name`` (``record``: euler inside ``record_sampling``, the recorder's)."""
    import comfy.k_diffusion.sampling
    import comfy.samplers

    stats = []  # the adaptive solve's AdaptiveStats: the same solve as the registered sampler, with its counts
    function = getattr(comfy.k_diffusion.sampling, f"sample_{name}")
    if name in ADAPTIVE:
        def solve(model, x, sigmas, extra_args=None, callback=None, disable=None, data_end_sigma=None):
            x, run_stats = pack_module("samplers").solve_adaptive(
                model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, method=name[3:],
                data_end_sigma=data_end_sigma)
            stats.append(run_stats)
            return x

        function = pack_module("nodes.comfy_sampling").comfy_sampler_function(solve)
    sampler = comfy.samplers.KSAMPLER(function)
    optimizers = pack_module("samplers.optimizers")
    host_devices = getattr(optimizers, "HOST_COEFFICIENT_DEVICES", None)
    if host_devices is not None:
        optimizers.HOST_COEFFICIENT_DEVICES = ()  # the accelerator path (see the module docstring)
    state = getattr(work, "run_state", None)
    if state is None:  # installed once: ComfyUI appends wrappers under a key
        state = work.run_state = RunState(work.guider)
    state.calls = 0
    try:
        counter = sync_counter(state, device)
        with counter:
            work.run(sampler, steps, record=record)
    finally:
        if host_devices is not None:
            optimizers.HOST_COEFFICIENT_DEVICES = host_devices
    attempts = stats[-1].accepted + stats[-1].rejected + stats[-1].fixed_steps if stats else steps
    counts = counter.counts
    return dict(per_step=counts[("loop", "pack")] / attempts, per_run=counts[("run", "pack")],
                comfy_per_call=counts[("loop", "comfy")] / max(1, state.calls), nfe=state.calls, attempts=attempts,
                cuda_per_step=counts[("loop", "cuda:pack")] / attempts if device == "cuda" else None,
                where="; ".join(f"{w} ×{n / attempts:g}/step" for w, n in counter.where.most_common(3)),
                comfy_where="; ".join(f"`{w}` ×{n / max(1, state.calls):g}"
                                      for w, n in counter.comfy_where.most_common()))


def load_workload(args):
    """(Workload, description of the model)."""
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    path = ROOT / "tests" / "matrix" / "families.py"  # by path: ComfyUI's own ``tests`` package shadows ours
    try:
        spec = importlib.util.spec_from_file_location("flowscope_matrix_families", path)
        families = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = families  # dataclasses look their module up
        spec.loader.exec_module(families)
        family = families.build_family("flux", dtype=dtype, seed=0)
    except (FileNotFoundError, ImportError, KeyError) as error:
        shape = (1, 16, 16, 16) if args.quick else (1, 16, 128, 128)
        return (memory.Workload("ChannelMix", shape, model_type="flow", shift=3.0),
                f"ChannelMix fixed channel map (tests/matrix/families.py unavailable: {error}), float32")
    shape = (1, *family.spec.latent_shape) if args.quick else (1, 16, 128, 128)
    work = memory.Workload("flux", shape, model=family.model, positive=family.positive, negative=family.negative)
    return work, f"`build_family(\"flux\")` (ComfyUI's Flux classes, tiny width/depth), weights {dtype}"


def timed(fn, synchronize):
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def recorder_overhead(work, steps: int, repeats: int, synchronize) -> dict:
    """µs per model call that ``record_sampling`` adds to euler (median of interleaved pairs) and its run share."""
    euler = memory.sampler("euler")
    work.run(euler, steps, record=True)
    plain, recorded = [], []
    for repeat in range(repeats):
        pair = [lambda: work.run(euler, steps), lambda: work.run(euler, steps, record=True)]
        first, second = (pair if repeat % 2 == 0 else pair[::-1])
        a, b = timed(first, synchronize), timed(second, synchronize)
        plain.append(a if repeat % 2 == 0 else b)
        recorded.append(b if repeat % 2 == 0 else a)
    extra = statistics.median(r - p for r, p in zip(recorded, plain))
    return dict(us=1e6 * statistics.median(recorded) / steps, extra_us=1e6 * extra / steps,
                share=extra / statistics.median(plain), nfe=steps)


def fit_time(work, steps: int, rtol: float, synchronize) -> dict:
    nodes = pack_module("nodes.sampler_nodes")
    planner = pack_module("nodes.comfy_sampling").PlanningSampler(
        nodes.solver_fit_plan(pack_module("samplers.fitted").FitSettings("data", 3, 8, rtol)))
    seconds = timed(lambda: work.run(planner, steps), synchronize)
    fit = planner.result.fit
    return dict(seconds=seconds, reference_nfe=planner.result.reference_nfe,
                info=dict(base_error=fit.base_error, error=fit.error))


def render(args, env, description, shape, timing, syncs, recorder, fit, elapsed) -> str:
    fixed_nonzero = [n for n, s in syncs.items() if n not in ADAPTIVE and n != "euler" and s["per_step"] > 0]
    adaptive_high = [n for n, s in syncs.items() if n in ADAPTIVE and s["per_step"] > 1]
    cuda = args.device == "cuda"
    out = ["# GPU check: sampler overhead, host syncs, recorder, Fitted Solver fit\n",
           f"`bash benchmarks/gpu_check.sh --device {args.device}{' --quick' if args.quick else ''}` on {env['date']}, "
           f"commit {env['commit']}; {env['machine']}, torch {env['torch']}; {elapsed:.0f} s.\n",
           f"Model: {description}; latent {'×'.join(map(str, shape[1:]))} (batch 1, float32 as ComfyUI keeps it), "
           f"{args.steps} steps, `simple` schedule, CFG 1. Method: see the docstring of `benchmarks/gpu_check.py`.\n",
           "| sampler | NFE | µs/call | µs/call above euler | host syncs per step | syncs per run (setup) | "
           "ComfyUI+model syncs per call |" + (" CUDA sync warnings per step |" if cuda else "")
           + " where (per step) |",
           "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "") + "---|"]
    for name, sync in syncs.items():
        t = recorder if name == "recorder" else timing.get(name, dict(us=float("nan"), extra_us=0.0))
        out.append(f"| {name} | {sync['nfe']} | {t['us']:.1f} | {t['extra_us']:+.1f} | {sync['per_step']:g} | "
                   f"{sync['per_run']} | {sync['comfy_per_call']:g} |"
                   + (f" {sync['cuda_per_step']:g} |" if cuda else "")
                   + f" {sync['where'] or '–'} |")
    out += [f"\nµs/call: (run time − ComfyUI's fixed cost per run, {timing['euler']['fixed_us'][0]:.0f} µs) / NFE. "
            "Per step: fixed-step samplers per grid step, adaptive ones per step attempt. "
            f"Fixed-step samplers with host syncs per step: {', '.join(fixed_nonzero) or 'none'} (target 0); "
            f"adaptive above 1 per attempt: {', '.join(adaptive_high) or 'none'} (target ≤ 1). ComfyUI + model "
            "host reads per model call (euler run, the same for every sampler): "
            f"{syncs['euler']['comfy_where'] or 'none'}.\n",
            f"\n## Recorder (`record_sampling` around euler)\n\n| what | value |\n|---|---:|\n"
            f"| µs per model call above plain euler | {recorder['extra_us']:+.1f} |\n"
            f"| share of the plain run | {100 * recorder['share']:+.1f} % |\n"
            f"| recorder host syncs per step | {syncs['recorder']['per_step']:g} |\n"
            f"| recorder host syncs per run (finish) | {syncs['recorder']['per_run']} |\n",
            f"\n## Fitted Solver fit (8 steps, batch-1 pilot, data base order 3, history 8, rtol {args.rtol:g})\n\n"
            f"| what | value |\n|---|---:|\n| fit wall time (s) | {fit['seconds']:.2f} |\n"
            f"| reference NFE | {fit['reference_nfe']} |\n"
            f"| pilot endpoint RMS error base → fitted | {fit['info']['base_error']:.3e} → "
            f"{fit['info']['error']:.3e} |\n"]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="tiny latent, 5 samplers (CI; < 1 min on the CPU)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5; --quick 2)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.md"))
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.rtol = 1e-3 if args.quick else 1e-5
    if args.device == "cuda":
        os.environ["FLOWSCOPE_BENCH_GPU"] = "1"
    start = time.perf_counter()
    boot()
    import comfy.utils
    import torch

    comfy.utils.PROGRESS_BAR_ENABLED = False
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    names = list(QUICK_SAMPLERS) if args.quick else list(pack_module("samplers").SAMPLERS)
    work, description = load_workload(args)
    print(f"model: {description}; latent {work.shape}", flush=True)
    timing = memory.per_call_overhead(work, names, args.steps, args.repeats, print, synchronize,
                                      best=1 if args.quick else 3)
    syncs = {}
    for name in ["euler"] + names:
        syncs[name] = count_syncs(work, name, args.steps, args.device)
        print(f"  {name:<15} host syncs per step {syncs[name]['per_step']:g}, per run {syncs[name]['per_run']} "
              f"{syncs[name]['where']}", flush=True)
    syncs["recorder"] = count_syncs(work, "euler", args.steps, args.device, record=True)
    recorder = recorder_overhead(work, args.steps, args.repeats + 1, synchronize)
    print(f"  recorder: {recorder['extra_us']:+.1f} µs/call, syncs per step {syncs['recorder']['per_step']:g}",
          flush=True)
    fit = fit_time(work, 8, args.rtol, synchronize)
    print(f"  fitted solver fit at 8 steps: {fit['seconds']:.2f} s, reference {fit['reference_nfe']} NFE", flush=True)
    text = render(args, memory.environment(args.device), description, work.shape, timing, syncs, recorder, fit,
                  time.perf_counter() - start)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
