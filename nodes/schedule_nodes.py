"""SIGMAS nodes (FlowScope schedules and the trajectory-adaptive schedule) and the dropdown schedulers."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch

from .. import samplers as core
from ..samplers import reference, schedule_optimization
from .comfy_io import io
from .comfy_sampling import model_family, plan_with_guided_model, require_full_schedule

CATEGORY = "FlowScope/schedulers"
NODE_SCHEDULES = ["uniform", "sd3_shift", "flux_shift", "cosine", "linear_quadratic"]


def schedule_options(model_sampling, schedule: str, shift=3.0, width=1024, height=1024) -> dict:
    """The options of ``samplers.SCHEDULES[schedule]`` for the model's σ range and the node's inputs: σ_max is the
    model's (at most 1, the noise end, for the flow-only shifts); ``shift`` goes to sd3_shift, ``width``/``height``
    to flux_shift, the model family to cosine."""
    sigma_max = float(model_sampling.sigma_max)
    if schedule == "sd3_shift":
        return dict(sigma_max=min(sigma_max, 1.0), shift=shift)
    if schedule == "flux_shift":
        return dict(sigma_max=min(sigma_max, 1.0), width=width, height=height)
    if schedule == "cosine":
        return dict(sigma_max=sigma_max, flow=model_family(model_sampling).flow)
    return dict(sigma_max=sigma_max)


def model_schedule(model_sampling, schedule: str, steps: int, shift=3.0, width=1024, height=1024):
    """A FlowScope schedule spanning the model's σ range (float32, ends in 0), from ``samplers.SCHEDULES``."""
    if schedule not in NODE_SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(NODE_SCHEDULES)}")
    return core.SCHEDULES[schedule](steps, **schedule_options(model_sampling, schedule, shift, width, height))


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
        try:
            plan = plan_with_guided_model(guider, pilot_sigmas, latent_image, noise,
                                          trajectory_adaptive_pilot(steps, sampler_order))
        except ValueError as error:
            raise ValueError(f"FlowScope · Trajectory-Adaptive Scheduler: {error}") from error
        return io.NodeOutput(plan.sigmas)


def trajectory_adaptive_pilot(steps: int, order: int):
    """The plan (:func:`~.comfy_sampling.plan_with_guided_model`) of the Trajectory-Adaptive Scheduler: the pilot
    solve on the real guided model from the pilot sigmas; returns its :class:`~..samplers.TrajectoryPlan`."""

    def pilot(model, x, sigmas, extra_args, family, guidance):
        return x, core.trajectory_adaptive_plan(model, x, sigmas, steps, extra_args=extra_args,
                                                data_end_sigma=family.data_end_sigma, order=order)

    return lambda run: run.call(pilot)[1]


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
        result = plan_with_guided_model(guider, sigmas.cpu(), latent_image, noise,
                                        schedule_optimizer(sampler, knots, max_evaluations, reference_rtol))
        search = result.search
        report = (f"{len(sigmas) - 1} steps, pilot endpoint RMS error: input sigmas {search.base_error:.3e} → "
                  f"optimized {search.error:.3e} ({search.evaluations} pilot runs; reference "
                  f"{result.reference_nfe} NFE)")
        logging.info("%s: %s", who, report)
        summary = {"steps": len(sigmas) - 1, "pilot_base_error": search.base_error, "pilot_error": search.error,
                   "evaluations": search.evaluations, "reference_nfe": result.reference_nfe}
        return io.NodeOutput(result.sigmas, report, ui={"flowscope_schedule": [summary]})


@dataclass(frozen=True)
class OptimizedScheduleResult:
    """The Optimized Schedule's plan's result: the grid (dtype of the input sigmas), the search, the reference
    solve's model calls (None when a precomputed reference was given)."""
    sigmas: torch.Tensor
    search: schedule_optimization.ScheduleSearch
    reference_nfe: Optional[int]


def schedule_optimizer(candidate, knots, max_evaluations, reference_rtol, endpoint=None):
    """The plan (:func:`~.comfy_sampling.plan_with_guided_model`) of the Optimized Schedule node: on the base
    sigmas, the reference solve (:func:`~..samplers.reference.reference_solve`; or ``endpoint``, a precomputed
    reference for the same noise) and the candidate SAMPLER through its own ``sample`` (so noise scaling, the model
    wrapper and the latent are exactly those of a real run), then
    :func:`~..samplers.schedule_optimization.optimize_schedule`. Returns an :class:`OptimizedScheduleResult`."""

    def plan(run):
        sigmas = run.sigmas
        reference_nfe = None
        reference_end = endpoint
        if reference_end is None:
            def solve(model, x, grid, extra_args, family, guidance):
                return core.solve_adaptive(model, x, grid, extra_args=extra_args, disable=True,
                                           data_end_sigma=family.data_end_sigma,
                                           **reference.reference_options(reference_rtol))

            grid = reference.reference_sigmas(sigmas[0], run.family.reference_sigma_min).to(sigmas.dtype)
            reference_end, stats = run.call(solve, sigmas=grid)
            reference_nfe = stats.nfe
        progress = comfy.utils.ProgressBar(max_evaluations)

        def error_of(grid):
            comfy.model_management.throw_exception_if_processing_interrupted()
            samples = run.sample(candidate, grid.to(sigmas.dtype))
            progress.update(1)
            return float((samples - reference_end).double().pow(2).mean().sqrt())

        search = schedule_optimization.optimize_schedule(error_of, sigmas, knots=knots,
                                                         max_evaluations=max_evaluations)
        return OptimizedScheduleResult(search.sigmas.to(sigmas.dtype), search, reference_nfe)

    return plan


NODES = [Scheduler, TrajectoryAdaptiveScheduler, OptimizedSchedule]
