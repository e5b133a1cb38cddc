"""The quality benchmark's configuration: problems, NFE budgets, test and pilot batches per mode, and the
contenders (every built-in sampler × scheduler, every FlowScope sampler × schedule, the pilot-based methods).

Constants only and :func:`contenders` (which reads ComfyUI's dropdowns): see ``benchmarks/quality.py``.
"""
from __future__ import annotations

BUDGETS = (4, 8, 16, 32)
PROBLEMS = [("analytic", "analytic", 1.0), ("digits-flow", "digits-flow", 1.0),
            ("digits-flow cfg 3", "digits-flow", 3.0), ("digits-diffusion", "digits-diffusion", 1.0),
            ("digits-diffusion cfg 3", "digits-diffusion", 3.0),
            ("analytic-narrow", "analytic-narrow", 1.0)]  # (name, demo model, CFG)
SKIPPED_BUILTINS = {"dpm_adaptive": "adaptive step count, its NFE cannot be set to a budget"}
TRAJECTORY_ADAPTIVE = "fs_trajectory_adaptive"
OPTIMIZED = "fs_optimized"
# Samplers paired with the pilot-optimized schedule (Optimized Schedule node): it costs a pilot solve and
# ~optimizer_evaluations runs per budget, so only the 1-NFE/step predictor–correctors get it.
OPTIMIZED_SAMPLERS = ("fs_abm", "fs_exp_abm", "fs_abm3", "fs_exp_abm3")
OPTIMIZER_EVALUATIONS = {"quick": 20, "standard": 120, "full": 200}
PILOT_SEED = 1  # the pilot-based methods fit on this noise; the table measures seed 0
# Samples measured per problem (seed 0) and samples of the pilots the pilot-based methods fit on (seed 1). 64 test
# samples keep one borderline sample that ends in another mode from deciding a 4-NFE cell's flip rate.
TEST_BATCH = {"quick": 16, "standard": 64, "full": 64, "dropdown": 64}
PILOT_BATCH = {"quick": 16, "standard": 16, "full": 64, "dropdown": 16}
# FlowScope configurations beyond the dropdown defaults (options of the sampler nodes).
FLOWSCOPE_VARIANTS = {
    "fs_ab2+lo": ("sample_adams_bashforth", {"order": 2, "warm_start": "lower_order"}),
    "fs_ab3+lo": ("sample_adams_bashforth", {"order": 3, "warm_start": "lower_order"}),
    "fs_ab4+lo": ("sample_adams_bashforth", {"order": 4, "warm_start": "lower_order"}),
    "fs_abm3": ("sample_multistep_pc", {"order": 3, "prediction": "velocity"}),
    "fs_exp_abm3": ("sample_multistep_pc", {"order": 3, "prediction": "data"}),
}
# Fitted Solver node configurations (prediction, order, history): fitted on the pilot noise per σ grid.
FITTED_SOLVERS = {"fs_fitted": ("data", 3, 8), "fs_fitted_v": ("velocity", 3, 8)}
FITTED_SCHEDULERS = ("simple", "sgm_uniform", "beta", "karras", "exponential")
# The Fitted Solver node with optimize_schedule on: grid warp and coefficients searched together, started from
# the grid whose fit had the lowest pilot error (only for fs_fitted: the velocity base gives the same results).
FITTED_JOINT = "fs_fitted_schedule"
JOINT_EVALUATIONS = {"quick": 6, "standard": 60, "full": 100}
# The same node with optimize_schedule and refine_iterations, on a larger pilot batch: the joint search from that
# best grid, then end-to-end Levenberg–Marquardt on all coefficients and (optimize_schedule being on) the σ nodes.
# The refinement fits ~9 coefficients per step to the pilot endpoint, so it needs a pilot of well over 16 samples
# not to overfit (see REFINE_PILOT_BATCH).
FITTED_REFINED = "fs_fitted_refined"
# Iterations per budget: the refinement returns early when the held-out half stops improving; at 16 and 32 NFE an
# iteration costs 16–64× more model calls than at 4, hence fewer there.
REFINE_ITERATIONS = {"quick": {4: 1, 8: 1}, "standard": {4: 12, 8: 12, 16: 6, 32: 6},
                     "full": {4: 16, 8: 16, 16: 8, 32: 8}}
# Pilot samples per budget: a refinement iteration costs ≈ 9·N²/2 pilot-batch model calls for N steps, so the short
# grids afford larger pilots; a larger pilot lowers the held-out (test) error of the refined fit.
REFINE_PILOT_BATCH = {"quick": {4: 16, 8: 16}, "standard": {4: 512, 8: 512, 16: 256, 32: 256},
                      "full": {4: 512, 8: 512, 16: 256, 32: 256}}
ADAPTIVE_STEP_COST = {"fs_bosh3": 4, "fs_dopri5": 7}  # NFE of the first embedded step (FSAL afterwards)

# Stochastic dropdown samplers: they do not converge to the probability-flow endpoint.
STOCHASTIC_FLOWSCOPE = ("fs_langevin_pc", "fs_flow_sde")

# The "standard" preset: ComfyUI's deterministic (ODE) samplers. Ancestral/SDE samplers inject fresh noise,
# so they do not converge to the probability-flow endpoint the error is measured against.
DETERMINISTIC_BUILTINS = ["euler", "heun", "heunpp2", "dpm_2", "lms", "dpm_fast", "dpmpp_2m", "ipndm", "ipndm_v",
                          "deis", "res_multistep", "gradient_estimation", "ddim", "uni_pc", "uni_pc_bh2"]


def contenders(mode: str):
    import comfy.samplers

    quick = mode == "quick"
    fs_samplers = [name for name in comfy.samplers.SAMPLER_NAMES if name.startswith("fs_")]
    builtin_samplers = [name for name in comfy.samplers.SAMPLER_NAMES
                        if not name.startswith("fs_") and name not in SKIPPED_BUILTINS]
    builtin_schedulers = [name for name in comfy.samplers.SCHEDULER_NAMES if not name.startswith("fs_")]
    fs_schedulers = [name for name in comfy.samplers.SCHEDULER_NAMES if name.startswith("fs_")]
    if mode in ("standard", "dropdown"):
        builtin_samplers = [name for name in DETERMINISTIC_BUILTINS if name in builtin_samplers]
        fs_samplers = [name for name in fs_samplers if name not in STOCHASTIC_FLOWSCOPE]
    if mode == "dropdown":  # what a user picks in KSampler: every sampler name × scheduler name, default options
        return ([("built-in", s, sch) for s in builtin_samplers for sch in builtin_schedulers]
                + [("FlowScope", s, sch) for s in fs_samplers for sch in fs_schedulers + builtin_schedulers])
    if quick:
        builtin_samplers = ["euler", "heun", "dpmpp_2m", "uni_pc"]
        builtin_schedulers = ["simple", "karras"]
        fs_samplers = ["fs_euler", "fs_heun", "fs_ab2", "fs_ab3", "fs_secant", "fs_grad_est", "fs_dopri5", "fs_abm"]
        fs_schedulers = ["fs_cosine"]
    fs_samplers += [name for name in FLOWSCOPE_VARIANTS if not quick or name in ("fs_ab3+lo",)]
    rows = [("built-in", s, sch) for s in builtin_samplers for sch in builtin_schedulers]
    rows += [("FlowScope", s, sch) for s in fs_samplers for sch in fs_schedulers + builtin_schedulers
             + [TRAJECTORY_ADAPTIVE]]
    optimized = OPTIMIZED_SAMPLERS[:1] if quick else OPTIMIZED_SAMPLERS
    rows += [("FlowScope", s, OPTIMIZED) for s in optimized if s in fs_samplers]
    fitted = list(FITTED_SOLVERS)[:1] if quick else list(FITTED_SOLVERS)
    rows += [("FlowScope", s, sch) for s in fitted
             for sch in (("simple", "karras") if quick else FITTED_SCHEDULERS + (OPTIMIZED,))]
    # after the plain fits: both start from their best grid
    rows += [("FlowScope", "fs_fitted", FITTED_JOINT), ("FlowScope", "fs_fitted", FITTED_REFINED)]
    return rows

