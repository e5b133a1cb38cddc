"""Bridge between ComfyUI's sampling objects and the pure-torch samplers of samplers/.

ComfyUI calls a sampler function as ``fn(model, x, sigmas, extra_args, callback, disable, **extra_options)``
with ``model`` a ``KSamplerX0Inpaint`` whose ``inner_model`` is the guider and ``inner_model.inner_model``
the ``BaseModel``. The samplers only need to know whether the model is a flow (CONST) model, which decides
how the σ = 0 end is handled (see samplers/common.py), where a reference solve stops before its σ = 0 step and
which DDIM/Langevin formulas apply: :func:`model_family` decides it once.

Planning nodes (Trajectory-Adaptive Scheduler, Optimized Schedule, Fitted Solver) reach the guided model the same
way, through :func:`plan_with_guided_model`: a SAMPLER that only plans is handed to ``guider.sample`` as
SamplerCustomAdvanced does, and its plan runs pure functions of samplers/ on the real guided model.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import comfy.model_sampling
import comfy.sample
import comfy.samplers

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


@dataclass(frozen=True)
class ModelFamily:
    """What the samplers/ core needs to know about a model: whether it is a flow (CONST) model, the σ at which a
    flow model's σ = 0 stages are evaluated (``data_end_sigma``, None for VE/EPS models: they take the denoised
    step), and where a reference solve stops before its σ = 0 step (``reference_sigma_min``: the model's σ_min for
    VE/EPS models, which are not defined below it; None for flow models, integrated down to 0)."""
    flow: bool
    data_end_sigma: Optional[float]
    reference_sigma_min: Optional[float]


def model_family(model_sampling) -> ModelFamily:
    """The :class:`ModelFamily` of a ``model_sampling`` object (None: not a flow model, no σ_min)."""
    if is_flow_model(model_sampling):
        return ModelFamily(True, FLOW_DATA_END_SIGMA, None)
    sigma_min = getattr(model_sampling, "sigma_min", None)
    return ModelFamily(False, None, None if sigma_min is None else float(sigma_min))


def require_full_schedule(sigmas, who: str, advice: str) -> None:
    """``ValueError`` naming ``who`` and its input 'sigmas' unless it is a valid grid (non-increasing: equal
    neighbours are zero-length steps the samplers skip) ending in 0 with at least one nonzero step."""
    values = validate_sigmas(sigmas, f"{who}, input 'sigmas'")
    if values[-1] != 0:
        raise ValueError(f"{who}, input 'sigmas': the schedule must end in 0 (got {values[-1]:g}); {advice}")
    if values[0] == 0:
        raise ValueError(f"{who}, input 'sigmas': every σ is 0, the schedule has no step; {advice}")


def model_dependent_options(model) -> dict:
    family = model_family(find_model_sampling(model))
    return {"data_end_sigma": family.data_end_sigma, "flow_model": family.flow}


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


def _downscale_ratios(latent: dict) -> dict:
    """The LATENT's downscale ratios for ``fix_empty_latent_channels`` where ComfyUI's takes them (newer versions,
    as their SamplerCustomAdvanced passes them); nothing where it takes only the model and the latent."""
    parameters = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    return {name: latent.get(name) for name in ("downscale_ratio_spacial", "downscale_ratio_temporal")
            if name in parameters}


def sample_like_custom_advanced(guider, sampler, sigmas, latent_image: dict, noise, callback=None,
                                disable_pbar=True):
    """``guider.sample`` called as ComfyUI's SamplerCustomAdvanced does: the empty latent re-channelled to the
    model, noise from the NOISE object, the latent's noise mask and the noise seed."""
    latent = latent_image.copy()
    latent["samples"] = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"],
                                                               **_downscale_ratios(latent))
    return guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                         denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar,
                         seed=noise.seed)


class GuidedRun:
    """What ``guider.sample`` hands a SAMPLER (the guided model wrapper, the sigmas, the noise and the latent), for
    a plan to run samplers on exactly as a real run would: :meth:`sample` runs any SAMPLER, :meth:`call` a
    samplers/ function."""

    def __init__(self, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask, disable_pbar):
        self.model_wrap, self.sigmas, self.extra_args = model_wrap, sigmas, extra_args
        self.noise, self.latent_image, self.denoise_mask, self.disable_pbar = noise, latent_image, denoise_mask, \
            disable_pbar
        self.family = model_family(model_wrap.inner_model.model_sampling)

    def sample(self, sampler, sigmas):
        """The samples of ``sampler`` on ``sigmas`` from this run's noise (no callback, no progress bar)."""
        return sampler.sample(self.model_wrap, sigmas.clone(), dict(self.extra_args), None, self.noise,
                              self.latent_image, self.denoise_mask, True)

    def call(self, function, sigmas=None, guidance=False) -> tuple:
        """Run ``function(model, x, sigmas, extra_args, family, guidance) → (x, value)`` as ComfyUI runs a sampler
        function (noise scaling, the inpainting wrapper; ``sigmas`` default this run's) and return ``(samples,
        value)``, the samples as a SAMPLER returns them (after ComfyUI's inverse noise scaling).
        ``family``: the :class:`ModelFamily`; ``guidance``: with ``guidance=True`` the source of each model call's
        CFG guidance direction (a :class:`GuidanceProbe`), else None."""
        values = []

        def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
            probe = GuidanceProbe() if guidance else None
            if probe is not None:
                extra_args = probe.installed(extra_args)
            x, value = function(model, x, sigmas, extra_args, self.family, None if probe is None else probe.latest)
            values.append(value)
            return x

        sigmas = self.sigmas if sigmas is None else sigmas
        samples = comfy.samplers.KSAMPLER(sampler_function).sample(
            self.model_wrap, sigmas, dict(self.extra_args), None, self.noise, self.latent_image, self.denoise_mask,
            self.disable_pbar)
        return samples, values[0]


class PlanningSampler(comfy.samplers.Sampler):
    """A SAMPLER that only plans: given to ``guider.sample``, it calls ``plan(GuidedRun)``, keeps what the plan
    returns in ``result`` and returns the latent unchanged."""

    def __init__(self, plan):
        self.plan, self.result = plan, None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.result = self.plan(GuidedRun(model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask,
                                          disable_pbar))
        return latent_image if latent_image is not None else noise


def plan_with_guided_model(guider, sigmas, latent_image: dict, noise, plan):
    """What ``plan(GuidedRun)`` returns when run inside ``guider.sample`` on ``sigmas`` from the NOISE object's noise
    (:func:`sample_like_custom_advanced`): the one way planning nodes reach the real guided model."""
    planner = PlanningSampler(plan)
    sample_like_custom_advanced(guider, planner, sigmas, latent_image, noise)
    return planner.result
