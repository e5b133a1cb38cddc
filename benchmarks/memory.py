"""Peak memory of every ``fs_`` sampler and of the trajectory recorder above ComfyUI's ``euler``, at real
latent sizes, and each sampler's per-model-call time above euler's.

Latents: SDXL 1024² (4×128×128, an EPS model), Flux 1024² (16×128×128 as the sampler sees it; Flux packs
2×2 patches into tokens inside the model) and a Wan-like video latent (16×21×60×104), batch 1, float32.
Model: :class:`ChannelMix`, a fixed linear map over the latent channels wrapped as a ComfyUI MODEL the way
the pack's demo models are (``BaseModel`` + ``ModelPatcher``). A sampler's extra memory does not depend on
the network; this one allocates only its output, so ComfyUI's model wrapper and the sampler are what is seen.
Every run goes through ComfyUI's real path: ``comfy.samplers.sampler_object(name)`` (the registered dropdown
function) sampled by ``CFGGuider.sample`` as SamplerCustomAdvanced calls it
(:func:`nodes.comfy_sampling.sample_like_custom_advanced`), CFG 1, the ``simple`` schedule.

Peak memory, CPU: :class:`LiveStorages`, a ``TorchDispatchMode`` that sees every tensor an ATen op returns,
tracks each storage once (by its StorageImpl, through a weak reference) until it is freed, and keeps the
maximum of the live bytes after every op. It counts tensor storages created during the run only (model
weights, the input noise and latent are there before), exactly, independent of the allocator; scratch memory
inside a kernel is not seen. CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the run.
Extra of a sampler = its peak − euler's peak (same model, latent, noise, steps); euler's own row is a second
euler run against the first (0 when the measurement is reproducible). Recorder = ``record_sampling``
(the Record Trajectory node, defaults) around euler against the same euler run without it.

Usage::

    python benchmarks/memory.py                  # full run, writes docs/benchmark_memory.md (a few min, 2 cores)
    python benchmarks/memory.py --quick --out /tmp/memory.md   # small latents, 3 samplers (CI smoke run)
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.comfy_inprocess import boot, pack_module  # noqa: E402
from benchmarks.harness import RESULTS_DIR, docstring_markdown, environment, write_report  # noqa: E402

# name: (latent shape, model type, flow shift)
SIZES = {"SDXL 1024²": ((1, 4, 128, 128), "eps", None), "Flux 1024²": ((1, 16, 128, 128), "flow", 3.0),
         "Wan 832×480×81": ((1, 16, 21, 60, 104), "flow", 8.0)}
QUICK_SIZES = {"small image": ((1, 4, 32, 32), "eps", None), "small video": ((1, 16, 3, 16, 16), "flow", 8.0)}
QUICK_SAMPLERS = ("fs_euler", "fs_rk4", "fs_ab4")
FLAG_TOLERANCE = 0.25  # latents: σ tensors and other sub-latent allocations stay below this
RECORDER_TARGET_MIB = 4.0  # "a few MB" by default
PACK_DIRS = tuple(str(ROOT / d) + os.sep for d in ("samplers", "nodes", "diagnostics"))
_STAGES = "k1 and the stage state"
# Latent-sized arrays each method must keep besides x and the model's input/output at its worst moment.
EXPECTED = {
    "fs_euler": (0, "none (euler's own arithmetic)"),
    **{f"fs_{m}": (2, _STAGES) for m in ("heun", "midpoint", "ralston")},
    "fs_rk3": (3, "k1, k2 and the stage state"), **{f"fs_{m}": (4, "k1–k3 and the stage state (4 derivatives at the "
                                                            "final sum)") for m in ("rk4", "rk38")},
    "fs_bosh3": (6, "4 stage derivatives, error estimate, candidate state"),
    "fs_dopri5": (9, "7 stage derivatives, error estimate, candidate state"),
    "fs_ab2": (2, "1 past derivative; its Heun warm-up step holds 2"),
    "fs_ab3": (5, "2 past derivatives; in the RK4 warm-up 1 past + RK4's 4"),
    "fs_ab4": (6, "3 past derivatives; in the RK4 warm-up 2 past + RK4's 4"),
    "fs_abm": (3, "2 past velocities for the corrector and the predicted state"),
    "fs_exp_abm": (5, "2 past denoised, 2 past velocities (σ = 0 step), the predicted state"),
    "fs_heavy_ball": (1, "the previous derivative"), "fs_grad_est": (1, "the previous derivative"),
    "fs_nesterov": (2, "the previous state and the look-ahead state"),
    "fs_secant": (4, "previous x and d and their differences Δx, Δd"),
    "fs_langevin_pc": (2, "the corrector's noise draw and score"),
    "fs_flow_sde": (1, "the noise draw of a step"), "fs_ddim": (0, "none (x and D, η = 0)"),
    # the recorder around euler: the latents it must carry from one step to the next (a latent small enough for a
    # batched block of ≤ 1 MiB is held in that block instead)
    "recorder": (2, "copies of the previous step's point and segment (references to the first x and the latest D, "
                    "which ComfyUI and euler hold anyway); small latents: a block ≤ 1 MiB"),
}


def known_frames(frame):
    """(kind, "path:line function") of the pack's ("pack") and ComfyUI's or the test models' ("comfy") frames
    from ``frame`` outward."""
    comfy_dir = str(pathlib.Path(sys.modules["comfy.samplers"].__file__).parents[1]) + os.sep
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PACK_DIRS):
            yield "pack", f"{os.path.relpath(path, ROOT)}:{frame.f_lineno} {frame.f_code.co_name}"
        elif path.startswith(comfy_dir) or path.startswith(str(ROOT / "tests") + os.sep):
            yield "comfy", f"{os.path.relpath(path, comfy_dir)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back


def where(frame) -> str:
    """The innermost frame of a sampler or the recorder (the pack's samplers/ except the shared common.py, the
    recorder in diagnostics/ and its node, k-diffusion) and, after "→", the innermost known frame below it (e.g. the model call)."""
    below = None
    for _, location in known_frames(frame):
        source = location.split(":")[0]
        if source.startswith(("samplers/", "diagnostics/", "nodes/diagnostic_nodes.py", "comfy/k_diffusion/")) and \
                source != "samplers/common.py":
            return location + (f" → {below}" if below else "")
        below = below or location
    return below or "?"


# -- model and workload ------------------------------------------------------------------------------------
def make_model(channels: int, model_type: str = "flow", shift=None, video: bool = False):
    """A ComfyUI MODEL (``ModelPatcher``) whose ``diffusion_model`` is :class:`ChannelMix`; ``model_type``
    "eps" (SD-style discrete β schedule) or "flow" (``ModelSamplingDiscreteFlow`` with ``shift``)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import torch

    class ChannelMix(torch.nn.Module):
        """``diffusion_model``: output = W·x over the channel axis, W = 0.5·I + a small fixed random matrix."""

        def __init__(self, channels=4, dtype=None, device=None, operations=None, **_):
            super().__init__()
            self.dtype = dtype or torch.float32
            generator = torch.Generator().manual_seed(0)
            weight = 0.5 * torch.eye(channels) + 0.1 * torch.randn(channels, channels, generator=generator) / channels
            self.register_buffer("weight", weight.to(self.dtype))

        def forward(self, x, timesteps, context=None, **_):
            return torch.matmul(self.weight, x.reshape(x.shape[0], x.shape[1], -1)).reshape(x.shape)

    class Latent(comfy.latent_formats.LatentFormat):
        latent_channels = channels
        latent_dimensions = 3 if video else 2

    class Config(pack_module("nodes.demo_models").DemoModelConfig):
        latent_format = Latent

    config = Config({"channels": channels})
    config.sampling_settings = {} if model_type == "eps" else {"shift": shift or 1.0}
    kind = comfy.model_base.ModelType.EPS if model_type == "eps" else comfy.model_base.ModelType.FLOW
    model = comfy.model_base.BaseModel(config, model_type=kind, unet_model=ChannelMix)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class Workload:
    """A MODEL with its latent, noise and guider (CFG 1); also the NOISE object SamplerCustomAdvanced and
    ``record_sampling`` take (``generate_noise``, ``seed``), returning a fixed noise tensor."""

    def __init__(self, label, shape, model=None, positive=None, negative=None, model_type="flow", shift=None):
        import comfy.samplers
        import torch

        self.label, self.shape, self.seed = label, tuple(shape), 0
        self.model = model or make_model(shape[1], model_type, shift, video=len(shape) == 5)
        context = [[torch.zeros(1, 1, 8), {}]]
        self.guider = comfy.samplers.CFGGuider(self.model)
        self.guider.set_conds(positive or context, negative or context)
        self.guider.set_cfg(1.0)
        self.latent = {"samples": torch.zeros(self.shape)}
        self.noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(1234))
        self.latent_bytes = self.noise.numel() * self.noise.element_size()

    def generate_noise(self, latent_dict):
        return self.noise

    def sigmas(self, steps: int):
        import comfy.samplers

        return comfy.samplers.calculate_sigmas(self.model.get_model_object("model_sampling"), "simple", steps)

    def run(self, sampler, steps: int, record: bool = False):
        """One sampling run (SamplerCustomAdvanced's call); with ``record`` through ``record_sampling``."""
        import torch

        with torch.inference_mode():
            if record:
                return pack_module("nodes.diagnostic_nodes").record_sampling(
                    self.guider, sampler, self.sigmas(steps), self.latent, self, "bench", preview=False)[0]
            return pack_module("nodes.comfy_sampling").sample_like_custom_advanced(
                self.guider, sampler, self.sigmas(steps), self.latent, self)


def sampler(name: str):
    return sys.modules["comfy.samplers"].sampler_object(name)  # the registered dropdown entry


# -- peak memory ---------------------------------------------------------------------------------------------
def _live_storages_mode():
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveStorages(TorchDispatchMode):
        """Peak bytes of the tensor storages created while active (see the module docstring)."""

        def __init__(self):
            super().__init__()
            self.live = {}  # StorageImpl address → (weak reference, bytes)
            self.bytes = self.peak = 0
            self.peak_at = "?"

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
                self.bytes -= self.live.pop(key)[1]
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided:
                    ref = StorageWeakRef(leaf.untyped_storage())
                    if ref.cdata not in self.live:
                        size = leaf.untyped_storage().nbytes()
                        self.live[ref.cdata] = (ref, size)
                        self.bytes += size
            if self.bytes > self.peak:
                self.peak, self.peak_at = self.bytes, where(sys._getframe(1))
            return out

    return LiveStorages


def peak_bytes(run, device: str) -> tuple[int, str]:
    """(peak bytes allocated by ``run()`` above what was allocated before it, where the peak was reached)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "–"
    with _live_storages_mode()() as mode:
        run()
    return mode.peak, mode.peak_at


def memory_rows(work: Workload, names, steps: int, device: str, log) -> list[dict]:
    """Per sampler: peak bytes above euler's; first row euler (a second run against the first), last the recorder."""
    euler = sampler("euler")
    work.run(euler, steps), work.run(euler, steps, record=True)  # warm-up: model load, first-call caches
    base, _ = peak_bytes(lambda: work.run(euler, steps), device)
    runs = [("euler", lambda: work.run(euler, steps))]
    runs += [(name, lambda smp=sampler(name): work.run(smp, steps)) for name in names]
    runs.append(("recorder", lambda: work.run(euler, steps, record=True)))
    rows = []
    for name, run in runs:
        run()  # warm-up
        peak, at = peak_bytes(run, device)
        row = dict(name=name, extra=peak - base, latents=(peak - base) / work.latent_bytes, at=at,
                   latent_bytes=work.latent_bytes)
        if name == "recorder":
            row["flag"] = row["extra"] > max(RECORDER_TARGET_MIB * 2 ** 20,
                                             (EXPECTED["recorder"][0] + FLAG_TOLERANCE) * work.latent_bytes)
        else:
            row["flag"] = row["latents"] > EXPECTED.get(name, (0, ""))[0] + FLAG_TOLERANCE
        rows.append(row)
        log(f"  {work.label:<16} {name:<15} peak extra {row['extra'] / 2 ** 20:9.2f} MiB "
            f"({row['latents']:6.2f} latents) at {at}{'  FLAGGED' if row['flag'] else ''}")
    return rows


# -- per-call time -------------------------------------------------------------------------------------------
def per_call_overhead(work: Workload, names, steps: int, repeats: int, log, synchronize=lambda: None,
                      best: int = 3) -> dict:
    """{name: dict(us, extra_us, cpu_us, extra_cpu_us, nfe)}: µs per model call in wall time and in process CPU
    time (less disturbed by other processes), and above euler's. A run costs F + Σ calls: ComfyUI's fixed cost
    per run F (= 2·T(N) − T(2N) of euler) is removed before dividing by the NFE, so that samplers with more
    calls per run are not credited with a smaller share of F. Medians over ``repeats`` interleaved pairs (euler
    first on even repeats, second on odd), each side the fastest of ``best`` runs."""
    import comfy.patcher_extension

    counter = {"calls": 0}

    def count(executor, *args, **kwargs):
        counter["calls"] += 1
        return executor(*args, **kwargs)

    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
                                                 "flowscope_call_counter", count, work.guider.model_options,
                                                 is_model_options=True)

    def run_time(smp, n=steps):  # fastest (wall µs, CPU µs) of a run, NFE
        wall = cpu = float("inf")
        for _ in range(best):
            counter["calls"] = 0
            synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            work.run(smp, n)
            synchronize()
            wall = min(wall, 1e6 * (time.perf_counter() - start))
            cpu = min(cpu, 1e6 * (time.process_time() - start_cpu))
        return (wall, cpu), counter["calls"]

    euler = sampler("euler")
    run_time(euler)
    estimates = [[2 * a - b for a, b in zip(run_time(euler)[0], run_time(euler, 2 * steps)[0])]
                 for _ in range(max(3, repeats))]
    fixed = tuple(max(0.0, statistics.median(values)) for values in zip(*estimates))  # < 0 only from timing noise

    def per_call(smp):
        times, nfe = run_time(smp)
        return tuple((t - f) / nfe for t, f in zip(times, fixed)), nfe

    references, results = [], {}
    for name in names:
        smp = sampler(name)
        per_call(smp)
        own, nfe = [], 0
        for repeat in range(repeats):
            reference = per_call(euler)[0] if repeat % 2 == 0 else None
            times, nfe = per_call(smp)
            reference = reference or per_call(euler)[0]
            own.append(times + (times[0] - reference[0], times[1] - reference[1]))
            references.append(reference)
        results[name] = dict(zip(("us", "cpu_us", "extra_us", "extra_cpu_us"), map(statistics.median, zip(*own))),
                             nfe=nfe)
        log(f"  {work.label:<16} {name:<15} NFE {nfe:>3}  {results[name]['us']:8.1f} µs/call  "
            f"{results[name]['extra_us']:+8.1f} µs/call vs euler (CPU time {results[name]['extra_cpu_us']:+8.1f})")
    wall, cpu = map(statistics.median, zip(*references))
    log(f"  fixed cost per run (removed): {fixed[0]:.0f} µs wall, {fixed[1]:.0f} µs CPU")
    return {"euler": dict(us=wall, cpu_us=cpu, extra_us=0.0, extra_cpu_us=0.0, nfe=steps, fixed_us=fixed), **results}


# -- report -------------------------------------------------------------------------------------------------
def render(args, env, memory: dict, timing: dict, timing_label: str, elapsed: float) -> str:
    command = "python benchmarks/memory.py" + (" --quick" if args.quick else "") + f" --device {args.device}"
    out = ["# Memory and per-call overhead at real latent sizes\n",
           f"Generated by `{command}` on {env['date']}, commit {env['commit']}; machine: {env['machine']}, "
           f"torch {env['torch']} ({env['threads']} threads), Python {env['python']}; {elapsed:.0f} s. "
           f"{args.steps} steps, batch 1, float32.\n", docstring_markdown(__doc__, 0, 2) + "\n",
           f"*Latents* = extra bytes / bytes of one latent. *Expected*: latent-sized arrays the method must keep "
           f"besides x and the model's input/output at its worst moment; a sampler is flagged when it measures more "
           f"(+{FLAG_TOLERANCE} latent for σ tensors), the recorder when it takes more than {RECORDER_TARGET_MIB:g} "
           f"MiB and more than the {EXPECTED['recorder'][0]} latents it must carry from step to step "
           f"(+{FLAG_TOLERANCE}). Euler keeps its previous D and d alive through the next model call (k-diffusion's loop "
           "variables), so a sampler keeping exactly its method's state can measure up to 2 latents below "
           "expected (fs_euler, the same method, measures −2). *Peak at*: the sampler's (or recorder's) source "
           "line running when the peak was reached, → the innermost line below it (ComfyUI's or the pack's).\n"]
    for label, rows in memory.items():
        shape = "×".join(map(str, {**SIZES, **QUICK_SIZES}[label][0][1:]))
        out += [f"\n## {label}: latent {shape} ({rows[0]['latent_bytes'] / 2 ** 20:.2f} MiB)\n",
                "| sampler | peak extra vs euler (MiB) | in latents | expected latents | what the method keeps | "
                "peak at | flag |", "|---|---:|---:|---:|---|---|---|"]
        for row in rows:
            expected, why = EXPECTED.get(row["name"], ("–", "reference" if row["name"] == "euler" else
                                                       "working block + per-step scalars"))
            flag = ("**above target**" if row["name"] == "recorder" else "**above expected**") if row["flag"] else ""
            out.append(f"| {row['name']} | {row['extra'] / 2 ** 20:.2f} | {row['latents']:.2f} | {expected} | "
                       f"{why} | {row['at']} | {flag} |")
    flagged = sorted({row["name"] for rows in memory.values() for row in rows[:-1] if row["flag"]})
    recorder = ", ".join(f"{label} {rows[-1]['extra'] / 2 ** 20:.1f} MiB" for label, rows in memory.items())
    out += ["\n**Summary.** Samplers above expectation: " + (", ".join(flagged) or "none") + ". "
            f"Recorder peak extra: {recorder} (target ≤ {RECORDER_TARGET_MIB:g} MiB, or its "
            f"{EXPECTED['recorder'][0]} carried latents where they are larger).\n",
            f"\n## Per-call overhead vs euler ({timing_label}, {args.steps} steps)\n",
            f"(Time of a run − ComfyUI's fixed cost per run) / its model calls, minus euler's; the fixed cost "
            f"(2·T(N) − T(2N) of euler: {timing['euler']['fixed_us'][0]:.0f} µs wall, "
            f"{timing['euler']['fixed_us'][1]:.0f} µs CPU) would otherwise favour samplers with more calls per run. "
            f"Median of {args.repeats} interleaved repeats, each side the fastest of 3 runs. Wall time, and process "
            "CPU time, which other processes on a shared machine disturb less (single-threaded torch). CPU timings "
            "here are noisy; the memory figures are exact.\n",
            "| sampler | NFE | µs per model call | µs per call above euler | CPU µs per call | "
            "CPU µs per call above euler |", "|---|---:|---:|---:|---:|---:|"]
    out += [f"| {name} | {row['nfe']} | {row['us']:.1f} | {row['extra_us']:+.1f} | {row['cpu_us']:.1f} | "
            f"{row['extra_cpu_us']:+.1f} |" for name, row in timing.items()]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small latents, 3 samplers (CI smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 9; --quick 3)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmark_memory.md"))
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                        help="where the figures go as JSON (default benchmark-results/, ignored by git)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 9)
    if args.device == "cuda":
        os.environ["FLOWSCOPE_BENCH_GPU"] = "1"
    start = time.perf_counter()
    boot()
    import comfy.utils
    import torch

    comfy.utils.PROGRESS_BAR_ENABLED = False
    names = list(QUICK_SAMPLERS) if args.quick else list(pack_module("samplers").SAMPLERS)
    memory, timing, timing_label = {}, {}, ""
    for index, (label, (shape, model_type, shift)) in enumerate((QUICK_SIZES if args.quick else SIZES).items()):
        work = Workload(label, shape, model_type=model_type, shift=shift)
        memory[label] = memory_rows(work, names, args.steps, args.device, print)
        if index == 0:  # per-call time at the first (SDXL) size
            sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
            timing = per_call_overhead(work, names, args.steps, args.repeats, print, sync)
            timing_label = f"{label}, latent {'×'.join(map(str, shape[1:]))}"
    env = environment(args.device)
    text = render(args, env, memory, timing, timing_label, time.perf_counter() - start)
    figures = dict(mode="quick" if args.quick else "full", environment=env, steps=args.steps, memory=memory,
                   per_call=timing, per_call_latent=timing_label)
    raw = write_report(args.out, text, figures, args.results_dir)
    print(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
