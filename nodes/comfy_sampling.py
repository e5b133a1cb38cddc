"""Bridge between ComfyUI's sampling objects and the pure-torch samplers of samplers/.

ComfyUI calls a sampler function as ``fn(model, x, sigmas, extra_args, callback, disable, **extra_options)``
with ``model`` a ``KSamplerX0Inpaint`` whose ``inner_model`` is the guider and ``inner_model.inner_model``
the ``BaseModel``. The samplers only need to know whether the model is a flow (CONST) model, which decides
how the σ = 0 end is handled (see samplers/common.py) and which DDIM/Langevin formulas apply.
"""
from __future__ import annotations

import functools
import inspect

import comfy.model_sampling
import comfy.sample

from ..samplers.common import validate_sigmas

# Flow models: stages that land on σ = 0 are evaluated at this σ (velocity is finite there, (x − D)/σ is not).
FLOW_DATA_END_SIGMA = 1e-4


def find_model_sampling(model):
    """The ``model_sampling`` object behind a k-diffusion-style model wrapper, or None."""
    obj = model
    for _ in range(6):
        if obj is None:
            return None
        model_sampling = getattr(obj, "model_sampling", None)
        if model_sampling is not None:
            return model_sampling
        obj = getattr(obj, "inner_model", None)
    return None


def is_flow_model(model_sampling) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def reference_sigma_min(model_sampling):
    """Where a reference solve stops before its σ = 0 step: the model's σ_min for VE/EPS models (they are not
    defined below it), None for flow models (integrated down to 0)."""
    return None if is_flow_model(model_sampling) else float(model_sampling.sigma_min)


def require_full_schedule(sigmas, who: str, advice: str) -> None:
    """``ValueError`` naming ``who`` and its input 'sigmas' unless it is a valid grid (non-increasing: equal
    neighbours are zero-length steps the samplers skip) ending in 0 with at least one nonzero step."""
    values = validate_sigmas(sigmas, f"{who}, input 'sigmas'")
    if values[-1] != 0:
        raise ValueError(f"{who}, input 'sigmas': the schedule must end in 0 (got {values[-1]:g}); {advice}")
    if values[0] == 0:
        raise ValueError(f"{who}, input 'sigmas': every σ is 0, the schedule has no step; {advice}")


def model_dependent_options(model) -> dict:
    flow = is_flow_model(find_model_sampling(model))
    return {"data_end_sigma": FLOW_DATA_END_SIGMA if flow else None, "flow_model": flow}


def comfy_sampler_function(sampler_fn):
    """Wrap a samplers/ function so it learns the model family from ComfyUI's model wrapper.

    Only the options the function declares are passed; explicit options (from a sampler node) win.
    """
    accepted = set(inspect.signature(sampler_fn).parameters)

    @functools.wraps(sampler_fn)
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        injected = {key: value for key, value in model_dependent_options(model).items()
                    if key in accepted and key not in options}
        return sampler_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                          **injected, **options)

    return sample


class GuidanceProbe:
    """The guidance direction ``D_c − D_u`` (conditional minus unconditional denoised prediction) of the latest
    model call, seen through a ``sampler_post_cfg_function`` (``comfy.samplers.cfg_function`` passes it both
    predictions; it returns the guided result unchanged). ``latest()`` is None after an unguided call (cfg = 1:
    ComfyUI then skips the unconditional pass)."""

    def __init__(self):
        self._latest = None

    def __call__(self, args):
        self._latest = None if args.get("uncond") is None else args["cond_denoised"] - args["uncond_denoised"]
        return args["denoised"]

    def latest(self):
        return self._latest

    def installed(self, extra_args) -> dict:
        """A copy of ``extra_args`` whose ``model_options`` also call this probe (the caller's dicts untouched)."""
        extra_args = dict(extra_args or {})
        model_options = dict(extra_args.get("model_options", {}))
        model_options["sampler_post_cfg_function"] = list(model_options.get("sampler_post_cfg_function", [])) + [self]
        extra_args["model_options"] = model_options
        return extra_args


def with_guidance_probe(sampler_fn):
    """Wrap a samplers/ function with a ``guidance`` source option so that a :class:`GuidanceProbe` feeds it."""

    @functools.wraps(sampler_fn)
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        probe = GuidanceProbe()
        return sampler_fn(model, x, sigmas, extra_args=probe.installed(extra_args), callback=callback,
                          disable=disable, guidance=probe.latest, **options)

    return sample


def sample_like_custom_advanced(guider, sampler, sigmas, latent_image: dict, noise, callback=None,
                                disable_pbar=True):
    """``guider.sample`` called as ComfyUI's SamplerCustomAdvanced does: the empty latent re-channelled to the
    model, noise from the NOISE object, the latent's noise mask and the noise seed."""
    latent = latent_image.copy()
    latent["samples"] = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
    return guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                         denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar,
                         seed=noise.seed)
