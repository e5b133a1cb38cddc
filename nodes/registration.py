"""Register FlowScope's samplers and schedulers in ComfyUI's dropdowns (KSampler, KSamplerAdvanced,
KSamplerSelect, BasicScheduler).

Uses only the documented extension points: ``sample_<name>`` on ``comfy.k_diffusion.sampling`` plus in-place
appends to ``KSAMPLER_NAMES``/``SAMPLER_NAMES``, and ``SCHEDULER_HANDLERS``/``SCHEDULER_NAMES``. Lists are never
rebound (nodes alias them) and positions are never assumed; registering twice changes nothing.
Set ``FLOWSCOPE_DISABLE_DROPDOWNS=1`` to keep the dropdowns untouched (the nodes still work).
"""
from __future__ import annotations

import logging
import os

import comfy.k_diffusion.sampling
import comfy.samplers

from .comfy_sampling import comfy_sampler_function

DISABLE_ENV = "FLOWSCOPE_DISABLE_DROPDOWNS"


def dropdowns_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def register_samplers(samplers: dict) -> list[str]:
    if dropdowns_disabled():
        logging.info("FlowScope: %s is set, samplers not added to the dropdowns", DISABLE_ENV)
        return []
    for name, fn in samplers.items():
        setattr(comfy.k_diffusion.sampling, f"sample_{name}", comfy_sampler_function(fn))
        for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
            if name not in names:
                names.append(name)
    return list(samplers)


def register_schedulers(schedulers: dict) -> list[str]:
    """schedulers: name → fn(model_sampling, steps) returning a SIGMAS tensor."""
    if dropdowns_disabled():
        return []
    for name, fn in schedulers.items():
        comfy.samplers.SCHEDULER_HANDLERS[name] = comfy.samplers.SchedulerHandler(fn, use_ms=True)
        if name not in comfy.samplers.SCHEDULER_NAMES:
            comfy.samplers.SCHEDULER_NAMES.append(name)
    return list(schedulers)
