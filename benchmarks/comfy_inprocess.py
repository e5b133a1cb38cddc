"""Boot the provisioned ComfyUI in this process (no HTTP) with the FlowScope pack loaded and registered.

Benchmarks use ComfyUI's real sampling path — ``comfy.samplers.CFGGuider.sample`` with samplers from
``comfy.samplers.sampler_object`` and sigmas from ``comfy.samplers.calculate_sigmas`` — on the pack's demo
MODELs, so built-in and FlowScope samplers are measured by the same code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_MODULE = "ComfyUI_FlowScope"


def run_coroutine(coroutine):
    """``asyncio.run`` — in a worker thread when this thread already runs an event loop (e.g. one left by
    Playwright's sync API in the same test process), where ``asyncio.run`` refuses to start."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, coroutine).result()


def boot(comfy_dir: str | None = None):
    """Import ComfyUI (CPU unless a GPU is present and FLOWSCOPE_BENCH_GPU=1) and the pack; returns the pack."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    comfy_dir = str(comfy_dir or os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui" / "ComfyUI")
    if not os.path.isfile(os.path.join(comfy_dir, "main.py")):
        raise RuntimeError(f"no ComfyUI at {comfy_dir}: run scripts/provision.sh or set COMFYUI_DIR")
    sys.path.insert(0, comfy_dir)
    argv = sys.argv
    sys.argv = [argv[0]] + ([] if os.environ.get("FLOWSCOPE_BENCH_GPU") == "1" else ["--cpu"])
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import utils.install_util  # noqa: F401  (ComfyUI expects it imported before nodes)
        import nodes  # noqa: F401
    finally:
        sys.argv = argv
    spec = importlib.util.spec_from_file_location(PACK_MODULE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = pack
    spec.loader.exec_module(pack)
    run_coroutine(pack.comfy_entrypoint())  # registers the fs_ samplers and schedulers
    return pack


def pack_module(name: str):
    return importlib.import_module(f"{PACK_MODULE}.{name}")


class CountingGuider:
    """A ``CFGGuider`` whose model calls are counted through ComfyUI's predict-noise wrapper."""

    def __init__(self, model_patcher, positive, negative, cfg: float):
        import comfy.patcher_extension
        import comfy.samplers

        self.guider = comfy.samplers.CFGGuider(model_patcher)
        self.guider.set_conds(positive, negative)
        self.guider.set_cfg(cfg)
        self.calls = 0

        def count(executor, *args, **kwargs):
            self.calls += 1
            return executor(*args, **kwargs)

        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
                                                     "flowscope_benchmark_counter", count,
                                                     self.guider.model_options, is_model_options=True)

    def sample(self, sampler, sigmas, noise, latent, seed: int = 0):
        """Returns (samples, nfe)."""
        self.calls = 0
        samples = self.guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=seed)
        return samples, self.calls
