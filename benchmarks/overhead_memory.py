"""Memory figures of the overhead benchmark: what the trajectory recorder retains (unique tensor storages, glibc's
live-allocation counter, RSS) against the step count, and the memory each sampler holds while the model runs;
plus the glibc allocator settings the timings run under (see ``benchmarks/overhead.py``).
"""
from __future__ import annotations

import gc
import os

from benchmarks.comfy_inprocess import pack_module
from benchmarks.overhead_workloads import FixedNoise, Workload, sampler


def _tensors(obj, depth=0):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and (isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque"):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)


def _storage_bytes(tensors, seen) -> tuple[int, int]:
    """(bytes of storages not yet in ``seen``, number of tensor objects)."""
    total, count = 0, 0
    for tensor in tensors:
        count += 1
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device.type)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total, count


# the recorder's latent-sized working memory: its block (small latents) or the state it carries between hooks (None
# after finish); _sigma_grid is O(steps)
BUFFER_FIELDS = ("_rows", "_carried")


def _buffer_tensors(recorder) -> list:
    """The block's tensor, or the latent copies the recorder carries between hooks (its references to the sampler's
    own tensors are not its memory)."""
    held = []
    for field in BUFFER_FIELDS:
        value = getattr(recorder, field, None)
        if value is not None:
            held += [value.all] if field == "_rows" else [t for t in (value.point, value.segment) if t is not None]
    return held


def recorder_memory(work: Workload, name: str, step_counts, log):
    """Bytes the recorder retains after a recording, split into latent-sized buffers and series."""
    import psutil
    import torch

    diagnostics = pack_module("nodes.diagnostic_nodes")
    captured = []
    original = diagnostics.TrajectoryRecorder

    class CapturingRecorder(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bench_working_bytes = 0
            captured.append(self)

        def on_step(self, *args):
            super().on_step(*args)
            self.bench_working_bytes = max(self.bench_working_bytes, _storage_bytes(_buffer_tensors(self), set())[0])

    diagnostics.TrajectoryRecorder = CapturingRecorder
    process = psutil.Process()
    in_use = _malloc_in_use()
    rows = []
    try:
        guider = work.plain_guider()
        for steps in step_counts:
            captured.clear()
            gc.collect()
            trim_heap()
            rss_before = process.memory_info().rss
            malloc_before = in_use() if in_use else 0
            with torch.inference_mode():
                _, _, trajectory = diagnostics.record_sampling(guider, sampler(name), work.sigmas(steps),
                                                               {"samples": work.latent}, FixedNoise(work.noise),
                                                               "bench", preview=False)
            gc.collect()
            trim_heap()
            rss_delta = process.memory_info().rss - rss_before
            malloc_delta = (in_use() - malloc_before) if in_use else None
            recorder = captured[-1]
            seen = set()
            buffers, _ = _storage_bytes(_buffer_tensors(recorder), seen)
            series_objects = [value for key, value in vars(recorder).items() if key not in BUFFER_FIELDS]
            series, count = _storage_bytes(_tensors(series_objects), seen)
            fields = [getattr(trajectory, f) for f in trajectory.__dataclass_fields__ if f != "extra"]
            traj_bytes, traj_count = _storage_bytes(_tensors(fields), set())
            latent_bytes = work.noise.numel() * work.noise.element_size()
            rows.append(dict(model=work.name, sampler=name, steps=steps, nfe=trajectory.nfe, latent_bytes=latent_bytes,
                             buffers=buffers, working=recorder.bench_working_bytes, series=series, series_tensors=count, trajectory=traj_bytes,
                             trajectory_tensors=traj_count, rss_delta=rss_delta, malloc_delta=malloc_delta))
            log(f"  {work.name:>20} {name:<8} steps {steps:>4} NFE {trajectory.nfe:>4}: buffers {buffers:>10} B "
                f"({buffers / latent_bytes:.1f} latents; {recorder.bench_working_bytes / latent_bytes:.1f} while sampling), series {series:>8} B in {count} tensors, "
                f"trajectory {traj_bytes:>8} B, allocated Δ {(malloc_delta or 0) / 1024:+.0f} KiB, "
                f"RSS Δ {rss_delta / 2 ** 20:+.1f} MiB")
            del trajectory, recorder
            captured.clear()
    finally:
        diagnostics.TrajectoryRecorder = original
    return rows


# -- memory held per sampler -------------------------------------------------------------------------------
def _glibc(name: str):
    """glibc's function ``name`` (through ctypes), or None off glibc."""
    import ctypes

    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no trimming, mmap only above 32 MiB), as PyTorch's caching
    allocator does on a GPU. With glibc's defaults every large temporary of the model is returned to the
    kernel when freed and faulted in again on the next call: on the 16×128×128 latent about half of a model
    call is system time (page faults), and which sampler or recorder happens to hold memory at the top of
    the heap moves timings by ±10 %. True when applied (glibc only)."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt = _glibc("mallopt")
    return (mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20))
            and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)))


def trim_heap() -> None:
    """Hand glibc's free heap pages back to the kernel (``malloc_trim(0)``), so that RSS counts memory in use
    plus fragmentation, not freed memory the allocator keeps (see :func:`keep_freed_memory`)."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _malloc_in_use():
    """Bytes glibc has handed out and not taken back (heap in use + mmapped chunks), or None off glibc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    mallinfo2 = _glibc("mallinfo2")
    if mallinfo2 is None:
        return None
    mallinfo2.restype = MallInfo2

    def in_use():
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


def held_memory(work: Workload, names, steps: int, log):
    """Memory a sampler holds while the model runs: the maximum, over its model calls, of the bytes allocated
    at the moment the call starts, above what was allocated before the run (same model, latent, noise for
    every sampler, so the difference to euler is the sampler's own state). CPU: glibc's live-allocation
    counter (``mallinfo2``, exact, not RSS); CUDA: ``torch.cuda.max_memory_allocated`` over the run (which also
    includes the model's temporaries)."""
    import comfy.patcher_extension
    import torch

    cuda = torch.cuda.is_available() and os.environ.get("FLOWSCOPE_BENCH_GPU") == "1"
    in_use = _malloc_in_use()
    if in_use is None and not cuda:
        log("  held memory: glibc mallinfo2 unavailable, skipped")
        return []
    guider = work.plain_guider()
    state = {"peak": 0, "calls": 0}

    def probe(executor, *args, **kwargs):
        state["calls"] += 1
        if in_use is not None:
            state["peak"] = max(state["peak"], in_use())
        return executor(*args, **kwargs)

    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
                                                 "flowscope_benchmark_memory", probe, guider.model_options,
                                                 is_model_options=True)
    latent_bytes = work.noise.numel() * work.noise.element_size()
    rows = []
    sigmas = work.sigmas(steps)
    for name in ("euler",) + tuple(names):
        smp = sampler(name)
        with torch.inference_mode():
            guider.sample(work.noise, work.latent, smp, sigmas, disable_pbar=True, seed=0)  # warm-up
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = in_use() if in_use is not None else 0
            cuda_base = torch.cuda.memory_allocated() if cuda else 0
            state.update(peak=base, calls=0)
            guider.sample(work.noise, work.latent, smp, sigmas, disable_pbar=True, seed=0)
            row = dict(sampler=name, nfe=state["calls"], held=state["peak"] - base, latent_bytes=latent_bytes)
            if cuda:
                torch.cuda.synchronize()
                row["cuda_peak_above_base"] = torch.cuda.max_memory_allocated() - cuda_base
        rows.append(row)
        log(f"  held {name:<15} NFE {row['nfe']:>3}  {row['held'] / 2 ** 20:7.1f} MiB "
            f"({row['held'] / latent_bytes:.1f} latents) at model calls")
    return rows
