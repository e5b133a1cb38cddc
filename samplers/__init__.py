"""FlowScope's pure-torch sampling core (no ComfyUI imports).

Every sampler has the k-diffusion signature ``fn(model, x, sigmas, extra_args=None, callback=None,
disable=None, **options)`` with ``model(x, sigma * s_in, **extra_args) → denoised``; ``SAMPLERS`` maps the
registered names to them, ``SAMPLER_INFO`` gives order, NFE per step and one line of advice per name (both derived
from the one list of :class:`~.registry.SamplerSpec` in :mod:`.registry`), and
``SCHEDULES`` maps schedule names to ``fn(steps, sigma_max=..., sigma_min=..., **options)`` (advice in
``SCHEDULE_INFO``; the model-dependent :func:`trajectory_adaptive_sigmas` is separate). Functions that report
more than the sample return it (``solve_adaptive`` → ``(x, AdaptiveStats)``, ``fit_pipeline`` → ``FitResult``, …).
All samplers accept ``data_end_sigma`` (flow models: the σ at which σ = 0 stages are evaluated, see
:mod:`.common`) except the DDIM family, which never evaluates at σ = 0. Every sampler skips zero-length steps
(equal consecutive σ, :class:`~.common.SigmaSteps`) and runs on float16/bfloat16 latents in their dtype with
float64 coefficients (:mod:`.common`).
"""
from .adaptive import AdaptiveStats, sample_adaptive, sample_fs_bosh3, sample_fs_dopri5, solve_adaptive
from .common import SigmaSteps, validate_latent, validate_sigmas
from .multistep import adams_bashforth_weights, sample_adams_bashforth, sample_fs_ab2, sample_fs_ab3, sample_fs_ab4
from .fitted import (FitResult, FitSettings, FittedSolver, fit_pipeline, fit_solver, refine_end_to_end,
                     sample_fitted)
from .predictor_corrector import (MULTISTEP_PREDICTIONS, PREDICTIONS, WARM_STARTS, sample_fs_abm,
                                  sample_fs_exp_abm, sample_fs_noise_abm, sample_fs_vp_abm, sample_multistep_pc)
from .optimizers import sample_gradient_estimation, sample_heavy_ball, sample_nesterov, sample_secant
from .runge_kutta import (rk_step, sample_fs_euler, sample_fs_heun, sample_fs_midpoint, sample_fs_ralston,
                          sample_fs_rk3, sample_fs_rk4, sample_fs_rk38, sample_rk)
from .reference import (REFERENCE_MAX_NFE, pilot_reference, reference_options, reference_solve,
                        reference_trajectory)
from .schedule_optimization import ScheduleSearch, nelder_mead, optimize_schedule, warp_schedule
from .schedules import SCHEDULE_INFO, SCHEDULES, TrajectoryPlan, trajectory_adaptive_plan, trajectory_adaptive_sigmas
from .step_control import PIController
from .stochastic import sample_ddim, sample_flow_sde, sample_langevin_pc
from .tableaux import TABLEAUX, ButcherTableau
from .registry import SAMPLER_INFO, SAMPLER_SPECS, SAMPLERS, SamplerSpec, sampler_table_markdown

__all__ = [
    "SAMPLERS", "SAMPLER_INFO", "SCHEDULES", "SCHEDULE_INFO", "TABLEAUX", "ButcherTableau", "PIController", "rk_step",
    "SAMPLER_SPECS", "SamplerSpec", "sampler_table_markdown",
    "sample_rk", "sample_adaptive", "solve_adaptive", "AdaptiveStats", "sample_adams_bashforth", "adams_bashforth_weights",
    "sample_multistep_pc", "sample_heavy_ball",
    "sample_nesterov", "sample_gradient_estimation", "sample_secant", "sample_ddim", "sample_flow_sde",
    "sample_langevin_pc", "trajectory_adaptive_sigmas", "trajectory_adaptive_plan", "TrajectoryPlan",
    "optimize_schedule", "ScheduleSearch", "warp_schedule", "nelder_mead", "pilot_reference", "reference_solve",
    "reference_options", "REFERENCE_MAX_NFE", "validate_sigmas", "validate_latent", "SigmaSteps", "FittedSolver",
    "fit_solver", "reference_trajectory", "refine_end_to_end", "sample_fitted", "fit_pipeline", "FitSettings",
    "FitResult", "PREDICTIONS", "MULTISTEP_PREDICTIONS", "WARM_STARTS",
] + [f.__name__ for f in SAMPLERS.values() if f.__name__.startswith("sample_fs_")]
