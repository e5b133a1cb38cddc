"""FlowScope's pure-torch sampling core (no ComfyUI imports).

Every sampler has the k-diffusion signature ``fn(model, x, sigmas, extra_args=None, callback=None,
disable=None, **options)`` with ``model(x, sigma * s_in, **extra_args) → denoised``; ``SAMPLERS`` maps the
registered names to them, ``SAMPLER_INFO`` gives order, NFE per step and one line of advice per name, and
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
from .predictor_corrector import PREDICTIONS, sample_fs_abm, sample_fs_exp_abm, sample_multistep_pc
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

SAMPLERS = {
    "fs_euler": sample_fs_euler,
    "fs_heun": sample_fs_heun,
    "fs_midpoint": sample_fs_midpoint,
    "fs_ralston": sample_fs_ralston,
    "fs_rk3": sample_fs_rk3,
    "fs_rk4": sample_fs_rk4,
    "fs_rk38": sample_fs_rk38,
    "fs_bosh3": sample_fs_bosh3,
    "fs_dopri5": sample_fs_dopri5,
    "fs_ab2": sample_fs_ab2,
    "fs_ab3": sample_fs_ab3,
    "fs_ab4": sample_fs_ab4,
    "fs_abm": sample_fs_abm,
    "fs_exp_abm": sample_fs_exp_abm,
    "fs_heavy_ball": sample_heavy_ball,
    "fs_nesterov": sample_nesterov,
    "fs_grad_est": sample_gradient_estimation,
    "fs_secant": sample_secant,
    "fs_langevin_pc": sample_langevin_pc,
    "fs_flow_sde": sample_flow_sde,
    "fs_ddim": sample_ddim,
}

# order: convergence order of the default options (weak order for the stochastic ones);
# nfe_per_step: model evaluations per grid step with the default options.
SAMPLER_INFO = {
    "fs_euler": dict(order=1, nfe_per_step="1", advice="Baseline; bit-identical to ComfyUI's euler."),
    "fs_heun": dict(order=2, nfe_per_step="2", advice="Second order including the last step on flow models."),
    "fs_midpoint": dict(order=2, nfe_per_step="2", advice="Second order; Heun's cost, evaluates mid-step."),
    "fs_ralston": dict(order=2, nfe_per_step="2", advice="Second order with the minimal error bound of its family."),
    "fs_rk3": dict(order=3, nfe_per_step="3", advice="Kutta's third order; a middle ground."),
    "fs_rk4": dict(order=4, nfe_per_step="4", advice="Classic RK4; best accuracy per step at moderate NFE."),
    "fs_rk38": dict(order=4, nfe_per_step="4", advice="Kutta's 3/8-rule fourth order; an alternative to fs_rk4."),
    "fs_bosh3": dict(order=3, nfe_per_step="adaptive (3/step)",
                     advice="Adaptive 3(2); the σ grid only seeds the step size and sets preview points."),
    "fs_dopri5": dict(order=5, nfe_per_step="adaptive (6/step)",
                      advice="Adaptive 5(4); high-accuracy references, nfe_budget to cap the cost."),
    "fs_ab2": dict(order=2, nfe_per_step="1", advice="Second order at Euler's cost (momentum with β = 1/2)."),
    "fs_ab3": dict(order=3, nfe_per_step="1", advice="Third order at 1 NFE/step; needs ≳ 10 steps to pay off."),
    "fs_ab4": dict(order=4, nfe_per_step="1", advice="Fourth order at 1 NFE/step; for smooth paths and many steps."),
    "fs_abm": dict(order=3, nfe_per_step="1",
                   advice="Adams–Bashforth–Moulton PEC (AB2 + 3-point corrector): order 3 at 1 NFE/step; "
                          "flow models."),
    "fs_exp_abm": dict(order=3, nfe_per_step="1",
                       advice="Data-prediction exponential multistep PEC in log σ (UniPC-like); for EPS/VE models."),
    "fs_heavy_ball": dict(order=2, nfe_per_step="1",
                          advice="Gradient momentum; β = 1/2 is AB2. variant='polyak' is first order (lags)."),
    "fs_nesterov": dict(order=2, nfe_per_step="1 (2 on the first step)",
                        advice="Look-ahead evaluation; second order at lookahead = 1/2."),
    "fs_grad_est": dict(order=1, nfe_per_step="1",
                        advice="ComfyUI's gradient estimation (γ = 2); γ = 1.5 makes it second order (AB2)."),
    "fs_secant": dict(order=2, nfe_per_step="1",
                      advice="Quasi-Newton: exponential AB2 with a secant curvature; variant='euler' is order 1."),
    "fs_langevin_pc": dict(order=1, nfe_per_step="1 + corrector_steps",
                           advice="Langevin corrections at every σ; fixes drift off the marginal, adds noise."),
    "fs_flow_sde": dict(order=1, nfe_per_step="1", advice="Stochastic flow sampling (DDIM-η); η = 1 posterior noise."),
    "fs_ddim": dict(order=1, nfe_per_step="1", advice="DDIM = Euler in x0-prediction form; η > 0 adds noise."),
}

__all__ = [
    "SAMPLERS", "SAMPLER_INFO", "SCHEDULES", "SCHEDULE_INFO", "TABLEAUX", "ButcherTableau", "PIController", "rk_step",
    "sample_rk", "sample_adaptive", "solve_adaptive", "AdaptiveStats", "sample_adams_bashforth", "adams_bashforth_weights",
    "sample_multistep_pc", "sample_heavy_ball",
    "sample_nesterov", "sample_gradient_estimation", "sample_secant", "sample_ddim", "sample_flow_sde",
    "sample_langevin_pc", "trajectory_adaptive_sigmas", "trajectory_adaptive_plan", "TrajectoryPlan",
    "optimize_schedule", "ScheduleSearch", "warp_schedule", "nelder_mead", "pilot_reference", "reference_solve",
    "reference_options", "REFERENCE_MAX_NFE", "validate_sigmas", "validate_latent", "SigmaSteps", "FittedSolver",
    "fit_solver", "reference_trajectory", "refine_end_to_end", "sample_fitted", "fit_pipeline", "FitSettings",
    "FitResult", "PREDICTIONS",
] + [f.__name__ for f in SAMPLERS.values() if f.__name__.startswith("sample_fs_")]
