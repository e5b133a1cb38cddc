"""SIGMAS nodes (FlowScope schedules and the trajectory-adaptive schedule) and the dropdown schedulers."""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch

from .. import samplers as core
from ..samplers import schedule_optimization, schedules
from .comfy_io import io
from .comfy_sampling import (FLOW_DATA_END_SIGMA, comfy_sampler_function, is_flow_model, reference_sigma_min,
                             require_full_schedule, sample_like_custom_advanced)

CATEGORY = "FlowScope/schedulers"
NODE_SCHEDULES = ["uniform", "sd3_shift", "flux_shift", "cosine", "linear_quadratic"]


def model_schedule(model_sampling, schedule: str, steps: int, shift=3.0, width=1024, height=1024):
    """A FlowScope schedule spanning the model's σ range (float32, ends in 0)."""
    sigma_max = float(model_sampling.sigma_max)
    flow = is_flow_model(model_sampling)
    if schedule == "uniform":
        return schedules.uniform_sigmas(steps, sigma_max=sigma_max)
    if schedule == "sd3_shift":
        return schedules.shifted_sigmas(steps, sigma_max=min(sigma_max, 1.0), shift=shift)
    if schedule == "flux_shift":
        return schedules.flux_sigmas(steps, sigma_max=min(sigma_max, 1.0), width=width, height=height)
    if schedule == "cosine":
        return schedules.cosine_sigmas(steps, sigma_max=sigma_max, flow=flow)
    if schedule == "linear_quadratic":
        return schedules.linear_quadratic_sigmas(steps, sigma_max=sigma_max)
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(NODE_SCHEDULES)}")


def apply_denoise(make_sigmas, steps: int, denoise: float) -> torch.Tensor:
    """As ComfyUI's BasicScheduler: a partial denoise keeps the last ``steps`` steps of a longer schedule."""
    if denoise <= 0.0:
        return torch.FloatTensor([])
    total = int(steps / denoise) if denoise < 1.0 else steps
    return make_sigmas(total)[-(steps + 1):]


# Schedules that need only (model_sampling, steps) also go into the scheduler dropdowns.
DROPDOWN_SCHEDULERS = {
    f"fs_{name}": (lambda ms, steps, _name=name: model_schedule(ms, _name, steps))
    for name in ("uniform", "cosine", "linear_quadratic")
}


class Scheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeScheduler", display_name="FlowScope · Scheduler", category=CATEGORY,
            description="FlowScope σ schedules over the model's σ range (core already offers karras, "
                        "exponential, beta…; these are the ones it lacks).",
            inputs=[io.Model.Input("model"),
                    io.Combo.Input("schedule", options=NODE_SCHEDULES, default="uniform",
                                   tooltip="uniform in σ; sd3_shift (uses shift); flux_shift (uses width/height); "
                                           "cosine (Nichol & Dhariwal); linear_quadratic (Movie Gen)."),
                    io.Int.Input("steps", default=20, min=1, max=10000),
                    io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                    io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01,
                                   tooltip="sd3_shift only: σ' = sσ/(1+(s−1)σ). SD3 uses 3.0."),
                    io.Int.Input("width", default=1024, min=16, max=16384, step=16,
                                 tooltip="flux_shift only: image width in pixels (sets μ)."),
                    io.Int.Input("height", default=1024, min=16, max=16384, step=16,
                                 tooltip="flux_shift only: image height in pixels (sets μ).")],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, schedule, steps, denoise, shift, width, height) -> io.NodeOutput:
        model_sampling = model.get_model_object("model_sampling")
        try:
            sigmas = apply_denoise(lambda total: model_schedule(model_sampling, schedule, total, shift, width,
                                                                height), steps, denoise)
        except ValueError as error:
            raise ValueError(f"FlowScope · Scheduler ({schedule}): {error}") from error
        return io.NodeOutput(sigmas)


class TrajectoryAdaptiveScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeTrajectoryAdaptiveScheduler", display_name="FlowScope · Trajectory-Adaptive Scheduler",
            category=CATEGORY,
            description="Runs a cheap pilot solve (Heun, 2 NFE per pilot step) of your model, guider and noise, "
                        "and places the requested steps where the pilot's local error is largest "
                        "(equidistributed error). Use the same noise seed for the pilot and the real run.",
            inputs=[io.Noise.Input("noise"), io.Guider.Input("guider"), io.Latent.Input("latent_image"),
                    io.Int.Input("steps", default=10, min=1, max=1000, tooltip="Steps of the returned schedule."),
                    io.Int.Input("pilot_steps", default=16, min=2, max=200,
                                 tooltip="Pilot resolution; costs 2·pilot_steps model calls."),
                    io.Combo.Input("pilot_scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                                   tooltip="Schedule of the pilot grid."),
                    io.Int.Input("sampler_order", default=2, min=1, max=5,
                                 tooltip="Order of the sampler you will use; sets the step density exponent.")],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, noise, guider, latent_image, steps, pilot_steps, pilot_scheduler,
                sampler_order) -> io.NodeOutput:
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        pilot_sigmas = comfy.samplers.calculate_sigmas(model_sampling, pilot_scheduler, pilot_steps).cpu()
        result = {}
        try:
            sample_like_custom_advanced(guider, trajectory_adaptive_pilot(model_sampling, steps, sampler_order,
                                                                          result), pilot_sigmas, latent_image, noise)
        except ValueError as error:
            raise ValueError(f"FlowScope · Trajectory-Adaptive Scheduler: {error}") from error
        return io.NodeOutput(result["sigmas"])


def trajectory_adaptive_pilot(model_sampling, steps: int, order: int, result: dict):
    """A SAMPLER that only plans: run through ``guider.sample`` on the pilot sigmas, it solves the pilot with
    the real guided model, stores the trajectory-adaptive σ grid in ``result["sigmas"]`` (and the pilot's
    statistics in ``result``) and returns the latent unchanged."""
    data_end_sigma = FLOW_DATA_END_SIGMA if is_flow_model(model_sampling) else None

    def pilot(model, x, sigmas, extra_args=None, callback=None, disable=None):
        result["sigmas"] = core.trajectory_adaptive_sigmas(model, x, sigmas, steps, extra_args=extra_args,
                                                           data_end_sigma=data_end_sigma, order=order,
                                                           info=result)
        return x

    return comfy.samplers.KSAMPLER(pilot)


class OptimizedSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeOptimizedSchedule", display_name="FlowScope · Optimized Schedule",
            category=CATEGORY,
            description="Fits the step placement of a schedule to YOUR sampler, model and guider (LD3 / "
                        "Bespoke-style): a tight reference solve from the pilot noise, then a Nelder–Mead search "
                        "over monotone warps of the input sigmas that minimizes the sampler's endpoint error. "
                        "Same step count and end points; never worse than the input on the pilot. Costs the "
                        "reference (hundreds of model calls) plus max_evaluations × steps model calls once — "
                        "reuse the SIGMAS for every seed.",
            inputs=[io.Noise.Input("noise", tooltip="Pilot noise; a seed other than the final run's generalizes."),
                    io.Guider.Input("guider"), io.Sampler.Input("sampler", tooltip="The sampler you will use."),
                    io.Sigmas.Input("sigmas", tooltip="The base schedule (any scheduler); must end in 0."),
                    io.Latent.Input("latent_image"),
                    io.Int.Input("max_evaluations", default=120, min=1, max=5000,
                                 tooltip="Pilot runs of the sampler (each costs its NFE for this schedule)."),
                    io.Int.Input("knots", default=6, min=1, max=32, tooltip="Pieces of the monotone warp."),
                    io.Float.Input("reference_rtol", default=1e-5, min=1e-9, max=1e-2, step=1e-6,
                                   tooltip="Relative tolerance of the reference solve (Dormand–Prince 5(4)).")],
            outputs=[io.Sigmas.Output(), io.String.Output(display_name="report")])

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image, max_evaluations, knots,
                reference_rtol) -> io.NodeOutput:
        who = "FlowScope · Optimized Schedule"
        require_full_schedule(sigmas, who, "optimize a full schedule, then split it")
        result = {}
        planner = ScheduleOptimizer(sampler, guider.model_patcher.get_model_object("model_sampling"),
                                    knots, max_evaluations, reference_rtol, result)
        sample_like_custom_advanced(guider, planner, sigmas.cpu(), latent_image, noise)
        report = (f"{len(sigmas) - 1} steps, pilot endpoint RMS error: input sigmas {result['base_error']:.3e} → "
                  f"optimized {result['error']:.3e} ({result['evaluations']} pilot runs; reference "
                  f"{result['reference_nfe']} NFE)")
        logging.info("%s: %s", who, report)
        return io.NodeOutput(result["sigmas"], report)


class ScheduleOptimizer(comfy.samplers.Sampler):
    """A SAMPLER that only plans (see :class:`OptimizedSchedule`): given to ``guider.sample`` with the base
    sigmas, it runs the reference and the candidate sampler through their own ``sample`` (so noise scaling,
    the model wrapper and the latent are exactly those of a real run), stores the optimized grid and its
    statistics in ``result`` and returns the latent unchanged. ``reference`` (optional) is a precomputed
    reference endpoint for the same noise (the benchmark reuses one per problem)."""

    def __init__(self, candidate, model_sampling, knots, max_evaluations, reference_rtol, result, reference=None):
        self.candidate, self.knots, self.max_evaluations = candidate, knots, max_evaluations
        self.reference_rtol, self.result = reference_rtol, result
        self.sigma_min = reference_sigma_min(model_sampling)
        self.reference = reference

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        stats = {}
        reference_sigmas = schedule_optimization.reference_sigmas(sigmas[0], self.sigma_min).to(sigmas.dtype)
        reference_sampler = comfy.samplers.KSAMPLER(comfy_sampler_function(core.sample_adaptive), extra_options=dict(
            **schedule_optimization.reference_options(self.reference_rtol), stats=stats))

        def run(sampler, grid):
            return sampler.sample(model_wrap, grid.clone(), dict(extra_args), None, noise, latent_image,
                                  denoise_mask, True)

        reference = self.reference if self.reference is not None else run(reference_sampler, reference_sigmas)
        progress = comfy.utils.ProgressBar(self.max_evaluations)

        def error_of(grid):
            comfy.model_management.throw_exception_if_processing_interrupted()
            samples = run(self.candidate, grid.to(sigmas.dtype))
            progress.update(1)
            return float((samples - reference).double().pow(2).mean().sqrt())

        optimized = schedule_optimization.optimize_schedule(error_of, sigmas, knots=self.knots,
                                                            max_evaluations=self.max_evaluations, info=self.result)
        self.result.update(sigmas=optimized.to(sigmas.dtype), reference_nfe=stats.get("nfe"))
        return latent_image if latent_image is not None else noise


NODES = [Scheduler, TrajectoryAdaptiveScheduler, OptimizedSchedule]
