"""Quality benchmark: endpoint error vs NFE of every ComfyUI built-in sampler × scheduler and every FlowScope
sampler × schedule, all through ComfyUI's real sampling path (CFGGuider.sample on the demo MODELs).

    .venv/bin/python benchmarks/quality.py            # full run (all samplers × schedulers, batch 64; hours on 2 cores)
    .venv/bin/python benchmarks/quality.py --standard # deterministic samplers, 64 test samples: the published table
    .venv/bin/python benchmarks/quality.py --quick --out /tmp/q.md   # CI smoke test (a few minutes)

Problems: the analytic mixture (exact log-density), digits-flow and digits-diffusion with and without CFG.
Reference per problem: fs_dopri5 at a tight tolerance from the same noise; its own accuracy is reported as the
difference to a 10× tighter solve. Budgets count model calls (the CFG batch counts once); a method gets the
largest step count whose NFE fits the budget. Metrics: endpoint RMS error (over samples and dimensions),
median per-sample RMS error, mode-flip rate (mixture component / digit class differs from the reference's),
and on the analytic problem the mean exact log-likelihood shift against the reference samples.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.comfy_inprocess import CountingGuider, boot, pack_module  # noqa: E402

BUDGETS = (4, 8, 16, 32)
SKIPPED_BUILTINS = {"dpm_adaptive": "adaptive step count, its NFE cannot be set to a budget"}
TRAJECTORY_ADAPTIVE = "fs_trajectory_adaptive"
OPTIMIZED = "fs_optimized"
# Samplers paired with the pilot-optimized schedule (Optimized Schedule node): it costs a pilot solve and
# ~optimizer_evaluations runs per budget, so only the 1-NFE/step predictor–correctors get it.
OPTIMIZED_SAMPLERS = ("fs_abm", "fs_exp_abm", "fs_abm3", "fs_exp_abm3")
OPTIMIZER_EVALUATIONS = {"quick": 20, "standard": 120, "full": 200}
PILOT_SEED = 1  # the optimized schedule is fitted on this noise and measured on seed 0
# Samples measured per problem (seed 0) and samples of the pilots the pilot-based methods fit on (seed 1). With 16
# test samples one borderline sample that ends in another mode decided the 4-NFE cells (analytic 4 NFE: the best
# built-in's flip rate 2/16 = 0.12 on the first 16 samples, 4/64 = 0.06 on 64; a one-off at 08:10 UTC 2026-11-29).
TEST_BATCH = {"quick": 16, "standard": 64, "full": 64}
PILOT_BATCH = {"quick": 16, "standard": 16, "full": 64}
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
# The refinement fits ~9 coefficients per step to the pilot endpoint; checked on half of a 16-sample pilot it
# overfit (held-out test error up to 18 % above the plain fit's), with 64 samples it kept improving the test error
# (digits-diffusion 16 NFE on karras: 2.30e-3 → 2.09e-3, with CFG 3 3.40e-3 → 2.84e-3; a one-off run at 01:00–01:10
# UTC 2026-11-29), and with 128 it improved further (the same 16-NFE cell on the standard run's grid: 2.0e-3 →
# 1.66e-3 measured error; a one-off run at 02:30 UTC 2026-11-29).
FITTED_REFINED = "fs_fitted_refined"
# Iterations per budget: the refinement returns early when the held-out half stops improving, and at 4 NFE the
# guided problem's refinement (CFG split) still improved in its sixth of six iterations (a one-off at 21:38 UTC
# 2026-12-02), while at 16 and 32 NFE an iteration costs 16–64× more model calls.
REFINE_ITERATIONS = {"quick": {4: 1, 8: 1}, "standard": {4: 12, 8: 12, 16: 6, 32: 6},
                     "full": {4: 16, 8: 16, 16: 8, 32: 8}}
# Pilot samples per budget: a refinement iteration costs ≈ 9·N²/2 pilot-batch model calls for N steps, so the short
# grids afford larger pilots, and larger pilots kept improving the test error (one-offs at 08:00–08:20 UTC
# 2026-11-29, measured on 64 test samples: digits-diffusion CFG 3 at 8 NFE on karras, 128 → 512 samples:
# 1.03e-2 → 8.87e-3; digits-flow CFG 3 at 16 on beta, 128 → 256: 2.81e-3 → 2.32e-3; analytic 4 on beta,
# 128 → 512: 5.74e-2 → 5.06e-2; digits-diffusion CFG 3 at 32 on karras with 256 samples: 8.72e-4, where the
# published 128-sample run had 1.02e-3 from another start grid on 16 test samples). Twelve iterations instead of
# six changed nothing at 8 NFE (the seventh is rejected).
REFINE_PILOT_BATCH = {"quick": {4: 16, 8: 16}, "standard": {4: 512, 8: 512, 16: 256, 32: 256},
                      "full": {4: 512, 8: 512, 16: 256, 32: 256}}
ADAPTIVE_STEP_COST = {"fs_bosh3": 4, "fs_dopri5": 7}  # NFE of the first embedded step (FSAL afterwards)


class Problem:
    def __init__(self, name, model_name, cfg, batch, seed=0):
        import comfy.sample

        networks = pack_module("models.networks")
        self.name, self.model_name, self.cfg = name, model_name, cfg
        self.model = pack_module("nodes.demo_models").load_demo_model(model_name)
        self.model_sampling = self.model.get_model_object("model_sampling")
        labels = torch.arange(batch) % 10
        positive = torch.nn.functional.one_hot(labels, networks.CONDITION_DIM).float()[:, None]
        if model_name == "analytic":  # the whole mixture: an unconditional exact flow
            positive = networks.condition_vector(None).repeat(batch, 1, 1)
        self.labels = labels
        self.guider = CountingGuider(self.model, [[positive, {}]], [[networks.condition_vector(None), {}]], cfg)
        latent = torch.zeros(batch, 4, 8, 8)
        self.latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        self.noise = torch.randn(self.latent.shape, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def sigmas(self, scheduler: str, steps: int) -> torch.Tensor:
        import comfy.samplers

        return comfy.samplers.calculate_sigmas(self.model_sampling, scheduler, steps).cpu()

    def run(self, sampler, sigmas):
        with torch.inference_mode():
            return self.guider.sample(sampler, sigmas, self.noise, self.latent, seed=self.seed)


def flowscope_sampler(function_name: str, **options):
    """A FlowScope sampler with node options, wrapped exactly as the sampler nodes do."""
    from ComfyUI_FlowScope import samplers as core
    from ComfyUI_FlowScope.nodes.sampler_nodes import make_sampler

    return make_sampler(getattr(core, function_name), **options)


def adaptive_sampler(method: str, **options):
    return flowscope_sampler("sample_adaptive", method=method, **options)


def reference_solution(problem: Problem, rtol: float):
    """Tight fs_dopri5 from σ_max to the model's σ_min (then the same σ = 0 end as every contender)."""
    from ComfyUI_FlowScope.nodes.comfy_sampling import model_family
    from ComfyUI_FlowScope.samplers.reference import reference_options, reference_sigmas

    sigma_min = model_family(problem.model_sampling).reference_sigma_min
    sigmas = reference_sigmas(float(problem.model_sampling.sigma_max), sigma_min).float()
    solution, nfe = problem.run(flowscope_sampler("sample_adaptive", **reference_options(rtol)), sigmas)
    check, _ = problem.run(flowscope_sampler("sample_adaptive", **reference_options(rtol / 10)), sigmas)
    accuracy = float((solution - check).pow(2).mean().sqrt())
    return check, nfe, accuracy


class Labeler:
    """Mode of a sample: mixture component (analytic) or nearest-class-mean digit (digits models)."""

    def __init__(self):
        digits = pack_module("models.digits_data")
        train_x, train_y, _, _ = digits.load_digits_split()
        self.classifier = digits.NearestClassMean(train_x, train_y)
        gaussian_mixture = pack_module("models.gaussian_mixture")
        from safetensors.torch import load_file

        weights = load_file(str(ROOT / "models" / "analytic.safetensors"))
        self.mixture = gaussian_mixture.GaussianMixture(weights["means"].double(), weights["stds"].double(),
                                                        weights["log_weights"].double())

    def modes(self, problem: Problem, samples):
        if problem.model_name == "analytic":
            return self.mixture.component_of(samples.double())
        return self.classifier.predict(samples)

    def log_likelihood(self, samples):
        return self.mixture.log_prob(samples.double(), 0.0)


def metrics(problem, labeler, samples, reference, reference_modes):
    per_sample = (samples - reference).reshape(samples.shape[0], -1).pow(2).mean(1).sqrt()
    result = {"rms_error": float(per_sample.pow(2).mean().sqrt()), "median_error": float(per_sample.median()),
              "mode_flip": float((labeler.modes(problem, samples) != reference_modes).float().mean())}
    if problem.model_name == "analytic":
        result["loglik_shift"] = float(labeler.log_likelihood(samples).mean()
                                       - labeler.log_likelihood(reference).mean())
    if not math.isfinite(result["rms_error"]):
        result["rms_error"] = result["median_error"] = float("inf")
    return result


def nfe_model(problem, sampler, scheduler):
    """NFE(steps) ≈ a·steps + b, measured at 2 and 3 steps (exact for every fixed-step method)."""
    counts = [problem.run(sampler, problem.sigmas(scheduler, steps))[1] for steps in (2, 3)]
    slope = counts[1] - counts[0]
    return slope, counts[0] - 2 * slope


def run_in_budget(problem, sampler_factory, scheduler, budget, slope_intercept, sigmas_for=None):
    """Largest step count whose NFE fits; returns (samples, nfe, steps) or None when even 1 step does not fit."""
    slope, intercept = slope_intercept
    steps = max(1, int((budget - intercept) // max(slope, 1)))
    while steps >= 1:
        sigmas = sigmas_for(steps) if sigmas_for else problem.sigmas(scheduler, steps)
        samples, nfe = problem.run(sampler_factory(), sigmas)
        if nfe <= budget:
            return samples, nfe, steps
        steps -= 1
    return None


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
    if mode == "standard":
        builtin_samplers = [name for name in DETERMINISTIC_BUILTINS if name in builtin_samplers]
        fs_samplers = [name for name in fs_samplers if name not in ("fs_langevin_pc", "fs_flow_sde")]
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


def trajectory_adaptive_grid(problem, steps, order, cache):
    """The trajectory-adaptive schedule from a 16-step Heun pilot of the same noise (pilot NFE reported apart)."""
    key = (steps, order)
    if key not in cache:
        from ComfyUI_FlowScope.nodes.comfy_sampling import PlanningSampler, model_family
        from ComfyUI_FlowScope.nodes.schedule_nodes import trajectory_adaptive_pilot

        planner = PlanningSampler(trajectory_adaptive_pilot(steps, order))
        flow = model_family(problem.model_sampling).flow
        problem.run(planner, problem.sigmas("simple" if flow else "karras", 16))
        cache[key] = planner.result.sigmas
    return cache[key]


class Pilot:
    """The pilot of the optimized schedule: the same problem with noise seed PILOT_SEED and its reference."""

    def __init__(self, problem_name, model_name, cfg, batch, rtol):
        """``rtol=None``: no endpoint reference (the Fitted Solver node computes its own)."""
        self.problem = Problem(problem_name, model_name, cfg, batch, seed=PILOT_SEED)
        self.reference = self.reference_nfe = self.accuracy = None
        if rtol is not None:
            self.reference, self.reference_nfe, self.accuracy = reference_solution(self.problem, rtol)

    def error(self, sampler, sigmas):
        samples, _ = self.problem.run(sampler, sigmas)
        return float((samples - self.reference).pow(2).mean().sqrt())


def optimized_grid(pilot, sampler_name, factory, steps, schedulers, evaluations, cache):
    """Optimized Schedule on the pilot noise, starting from the scheduler that is best for this sampler and
    step count on the pilot (the node takes any SIGMAS; the benchmark picks its start the same way a user
    would, by trying the dropdown)."""
    key = (sampler_name, steps)
    if key not in cache:
        from ComfyUI_FlowScope.nodes.comfy_sampling import PlanningSampler
        from ComfyUI_FlowScope.nodes.schedule_nodes import schedule_optimizer

        problem = pilot.problem
        starts = {name: problem.sigmas(name, steps) for name in schedulers}
        start_errors = {name: pilot.error(factory(), sigmas.clone()) for name, sigmas in starts.items()}
        finite = {name: e for name, e in start_errors.items() if math.isfinite(e)}
        start = min(finite, key=finite.get)
        planner = PlanningSampler(schedule_optimizer(factory(), knots=6, max_evaluations=evaluations,
                                                     reference_rtol=1e-5, endpoint=pilot.reference))
        with torch.inference_mode():
            problem.guider.guider.sample(problem.noise, problem.latent, planner, starts[start], disable_pbar=True,
                                         seed=problem.seed)
        cache[key] = (planner.result.sigmas, start, planner.result.search)
    return cache[key]


def fitted_sampler(pilot, sigmas, configuration, schedule_evaluations=0, refine_iterations=0):
    """The Fitted Solver node's SAMPLER for ``sigmas``, fitted on the pilot noise (reference rtol 1e-6), its SIGMAS
    output (``sigmas`` itself unless ``schedule_evaluations`` > 0 warps them) and the fit's ``FitResult``
    (``refine_iterations``: the node's end-to-end refinement)."""
    from ComfyUI_FlowScope.nodes.comfy_sampling import PlanningSampler
    from ComfyUI_FlowScope.nodes.sampler_nodes import fitted_solver_sampler, solver_fit_plan
    from ComfyUI_FlowScope.samplers.fitted import FitSettings

    prediction, order, history = configuration
    planner = PlanningSampler(solver_fit_plan(FitSettings(prediction, order, history, 1e-6, schedule_evaluations,
                                                          refine_iterations)))
    pilot.problem.run(planner, sigmas.clone())
    result = planner.result
    return fitted_solver_sampler(result.solver), result.sigmas.float(), result


def best_optimized_grid(optimized_grids, steps):
    """The optimized grid with the lowest pilot error among those fitted for ``steps`` steps, or None."""
    candidates = [(result.error, sigmas) for (_, grid_steps), (sigmas, _, result) in optimized_grids.items()
                  if grid_steps == steps]
    return min(candidates, key=lambda c: c[0])[1] if candidates else None


def start_grids(plain_fits) -> list:
    """The σ grids of the plain fits, lowest pilot error first: the refined contender starts from the first and,
    when that refinement stops before its iterations are used up (the held-out pilot half stopped improving: a
    local optimum), once more from the second, keeping the lower pilot error — as a user would try the next
    dropdown schedule."""
    return [sigmas for _, sigmas in sorted(plain_fits, key=lambda fit: fit[0])]


def log_refinement(log, sampler_name, budget, pilot, fit, label):
    refined, search = fit.refinement, fit.schedule_search
    log(f"  {sampler_name}/{FITTED_REFINED}@{budget} ({label}): {pilot.problem.noise.shape[0]}-sample pilot, "
        f"joint search {search.base_error:.2e} → {search.error:.2e}, refinement {refined.error_before:.2e} "
        f"→ {refined.error:.2e} (held-out half {refined.held_out_before:.2e} → {refined.held_out:.2e}, "
        f"{refined.iterations} iterations kept of {refined.accepted} accepted; first call at "
        f"{pack_module('samplers.fitted').describe_first_call(refined.solver.first_call)})")


PROBLEMS = [("analytic", "analytic", 1.0), ("digits-flow", "digits-flow", 1.0),
            ("digits-flow cfg 3", "digits-flow", 3.0), ("digits-diffusion", "digits-diffusion", 1.0),
            ("digits-diffusion cfg 3", "digits-diffusion", 3.0)]


def benchmark(mode: str, log=lambda *a: print(*a, flush=True), problems=None, budgets=None):
    """Rows of every contender on every problem and budget of ``mode``; ``problems``/``budgets`` (names, NFE
    budgets) restrict a run to some cells — each cell's contenders are the same as in the whole run."""
    quick = mode == "quick"
    problem_specs = [spec for spec in (PROBLEMS[:2] + PROBLEMS[3:4] if quick else PROBLEMS)
                     if problems is None or spec[0] in problems]
    selected_budgets = [b for b in ((4, 8) if quick else BUDGETS) if budgets is None or b in budgets]
    if not problem_specs or not selected_budgets:
        raise SystemExit(f"quality.py: the {mode} preset has none of the problems {problems} or none of the "
                         f"budgets {budgets}")
    budgets = selected_budgets
    boot()
    import comfy.samplers

    sampler_info = pack_module("samplers").SAMPLER_INFO
    batch, pilot_batch = TEST_BATCH[mode], PILOT_BATCH[mode]
    labeler = Labeler()
    results, references = [], {}
    start_schedulers = sorted({sch for _, _, sch in contenders(mode)
                               if sch not in (TRAJECTORY_ADAPTIVE, OPTIMIZED, FITTED_JOINT, FITTED_REFINED)})
    for problem_name, model_name, cfg in problem_specs:
        problem = Problem(problem_name, model_name, cfg, batch)
        started = time.time()
        reference, reference_nfe, accuracy = reference_solution(problem, 1e-5 if quick else 1e-7)
        reference_modes = labeler.modes(problem, reference)
        references[problem_name] = {"nfe": reference_nfe, "accuracy": accuracy}
        log(f"[{problem_name}] reference: {reference_nfe} NFE, accuracy {accuracy:.2e}")
        grids, nfe_models, optimized_grids = {}, {}, {}
        plain_fits = {}  # (sampler, budget) → [(pilot error, sigmas)] of the plain fits: where joint/refined start
        pilots = {}  # batch → Pilot (seed PILOT_SEED); the fits' pilot of pilot_batch samples has its reference

        def pilot(samples=pilot_batch):
            if samples not in pilots:
                with_reference = samples == pilot_batch
                pilots[samples] = Pilot(problem_name, model_name, cfg, samples, 1e-6 if with_reference else None)
                if with_reference:
                    log(f"[{problem_name}] pilot reference (seed {PILOT_SEED}): {pilots[samples].reference_nfe} NFE, "
                        f"accuracy {pilots[samples].accuracy:.2e}")
            return pilots[samples]

        for family, sampler_name, scheduler in contenders(mode):
            if sampler_name in FITTED_SOLVERS:
                for budget in budgets:  # 1 NFE per step: steps = budget
                    if scheduler in (FITTED_JOINT, FITTED_REFINED):
                        starts = start_grids(plain_fits.get((sampler_name, budget), []))
                        sigmas = starts[0] if starts else None
                    elif scheduler == OPTIMIZED:
                        sigmas = best_optimized_grid(optimized_grids, budget)
                    else:
                        sigmas = problem.sigmas(scheduler, budget)
                    if sigmas is None:
                        continue
                    evaluations = JOINT_EVALUATIONS[mode] if scheduler in (FITTED_JOINT, FITTED_REFINED) else 0
                    iterations = REFINE_ITERATIONS[mode][budget] if scheduler == FITTED_REFINED else 0
                    fit_pilot = pilot(REFINE_PILOT_BATCH[mode][budget] if scheduler == FITTED_REFINED else pilot_batch)

                    def fit_on(start, fit_pilot=fit_pilot, evaluations=evaluations, iterations=iterations,
                               configuration=FITTED_SOLVERS[sampler_name]):
                        return fitted_sampler(fit_pilot, start, configuration, evaluations, iterations)

                    sampler, sigmas, fit = fit_on(sigmas)
                    if scheduler == FITTED_REFINED and fit.refinement.iterations < iterations and len(starts) > 1:
                        log_refinement(log, sampler_name, budget, fit_pilot, fit, "best plain-fit grid; stopped early")
                        retry = fit_on(starts[1])
                        log_refinement(log, sampler_name, budget, fit_pilot, retry[2], "second-best plain-fit grid")
                        if retry[2].refinement.error < fit.refinement.error:
                            sampler, sigmas, fit = retry
                    samples, nfe = problem.run(sampler, sigmas.clone())
                    if scheduler == FITTED_JOINT:
                        search = fit.schedule_search
                        log(f"  {sampler_name}/{scheduler}@{budget}: pilot error {search.base_error:.2e} → "
                            f"{search.error:.2e} ({search.evaluations} fits)")
                    elif scheduler == FITTED_REFINED:
                        log_refinement(log, sampler_name, budget, fit_pilot, fit, "kept")
                    else:
                        log(f"  {sampler_name}/{scheduler}@{budget}: pilot error {fit.fit.base_error:.2e} → "
                            f"{fit.fit.error:.2e}")
                        plain_fits.setdefault((sampler_name, budget), []).append((fit.fit.error, sigmas))
                    results.append({"problem": problem_name, "family": family, "sampler": sampler_name,
                                    "scheduler": scheduler, "budget": budget, "nfe": nfe, "steps": budget,
                                    **metrics(problem, labeler, samples, reference, reference_modes)})
                continue
            order = sampler_info.get(sampler_name, {}).get("order", 1) if family == "FlowScope" else 1
            if sampler_name in ADAPTIVE_STEP_COST:
                method = sampler_name.removeprefix("fs_")

                def factory(budget=None, method=method):
                    return adaptive_sampler(method, nfe_budget=budget, max_nfe=budget, rtol=1e-3, atol=1e-4)
            elif sampler_name in FLOWSCOPE_VARIANTS:
                def factory(budget=None, name=sampler_name):
                    function_name, options = FLOWSCOPE_VARIANTS[name]
                    return flowscope_sampler(function_name, **options)
            else:
                def factory(budget=None, name=sampler_name):
                    return comfy.samplers.sampler_object(name)
            try:
                probe_scheduler = "simple" if scheduler in (TRAJECTORY_ADAPTIVE, OPTIMIZED) else scheduler
                if sampler_name not in nfe_models:  # NFE per step depends on the method, not the schedule
                    nfe_models[sampler_name] = (nfe_model(problem, factory(64), probe_scheduler)
                                                if sampler_name not in ADAPTIVE_STEP_COST else (1, 0))
                    log(f"  {sampler_name}: NFE(steps) = {nfe_models[sampler_name][0]}·steps "
                        f"{nfe_models[sampler_name][1]:+d}")
                slope_intercept = nfe_models[sampler_name]
            except Exception as error:  # a sampler that cannot run this problem at all is reported, not hidden
                log(f"  {sampler_name}/{scheduler}: fails ({type(error).__name__}: {error})")
                results.append({"problem": problem_name, "family": family, "sampler": sampler_name,
                                "scheduler": scheduler, "budget": None, "failed": f"{type(error).__name__}: {error}"})
                continue
            for budget in budgets:
                if budget < ADAPTIVE_STEP_COST.get(sampler_name, 0):
                    continue  # one embedded step does not fit this budget
                sigmas_for = None
                if scheduler == TRAJECTORY_ADAPTIVE:
                    def sigmas_for(steps, order=order):
                        return trajectory_adaptive_grid(problem, steps, min(order, 4), grids)
                elif scheduler == OPTIMIZED:
                    def sigmas_for(steps, name=sampler_name, factory=factory, budget=budget):
                        sigmas, start, result = optimized_grid(
                            pilot(), name, lambda: factory(budget), steps, start_schedulers,
                            OPTIMIZER_EVALUATIONS[mode], optimized_grids)
                        log(f"  {name}/{OPTIMIZED}@{steps} steps: from {start}, pilot error "
                            f"{result.base_error:.2e} → {result.error:.2e} ({result.evaluations} runs)")
                        return sigmas.clone()
                try:
                    outcome = run_in_budget(problem, lambda: factory(budget), probe_scheduler, budget,
                                            slope_intercept, sigmas_for)
                except Exception as error:
                    outcome = None
                    log(f"  {sampler_name}/{scheduler}@{budget}: fails ({type(error).__name__}: {error})")
                if outcome is None:
                    continue
                samples, nfe, steps = outcome
                row = {"problem": problem_name, "family": family, "sampler": sampler_name, "scheduler": scheduler,
                       "budget": budget, "nfe": nfe, "steps": steps,
                       **metrics(problem, labeler, samples, reference, reference_modes)}
                results.append(row)
        log(f"[{problem_name}] done in {time.time() - started:.0f} s")
    return results, references


def best_rows(results):
    best = {}
    for row in results:
        if row.get("budget") is None or not math.isfinite(row["rms_error"]):
            continue
        key = (row["problem"], row["budget"], row["family"])
        if key not in best or row["rms_error"] < best[key]["rms_error"]:
            best[key] = row
    return best


def problem_order(results) -> list:
    """The problems of ``results`` in the order of :data:`PROBLEMS` (merged parts may list them in any order)."""
    order = [name for name, _, _ in PROBLEMS]
    return sorted({row["problem"] for row in results}, key=order.index)


def report(results, references, command, mode) -> tuple[str, dict]:
    first_call_starts = pack_module("samplers.fitted").FIRST_CALL_STARTS
    best = best_rows(results)
    problems = problem_order(results)
    budgets = sorted({row["budget"] for row in results if row.get("budget")})
    lines = [
        "# Quality benchmark: endpoint error vs NFE", "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; mode: {mode}.", "",
        "References (fs_dopri5, tight tolerance, same noise): " + "; ".join(
            f"{name}: {ref['nfe']} NFE, own accuracy {ref['accuracy']:.1e}" for name, ref in references.items()), "",
        f"Best configuration per family and budget, measured on {TEST_BATCH[mode]} samples of noise seed 0 (RMS error "
        "over samples and latent dimensions; mode flip = share "
        "of samples whose mixture component / digit class differs from the reference's; Δlog p = mean exact "
        "log-likelihood shift against the reference, analytic only). The ratio is FlowScope's best error over the "
        "built-in best; the target is ≤ 0.5 with no worse mode-flip rate.", "",
        "| problem | NFE | best built-in (sampler / scheduler) | error | flips | best FlowScope (sampler / schedule) | "
        "error | flips | ratio | target met |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for problem in problems:
        for budget in budgets:
            builtin, ours = best.get((problem, budget, "built-in")), best.get((problem, budget, "FlowScope"))
            if not builtin or not ours:
                continue
            ratio = ours["rms_error"] / builtin["rms_error"] if builtin["rms_error"] > 0 else float("inf")
            met = ratio <= 0.5 and ours["mode_flip"] <= builtin["mode_flip"]
            summary[(problem, budget)] = {"ratio": ratio, "met": met}
            lines.append(
                f"| {problem} | {budget} | {builtin['sampler']} / {builtin['scheduler']} ({builtin['nfe']}) | "
                f"{builtin['rms_error']:.2e} | {builtin['mode_flip']:.2f} | {ours['sampler']} / {ours['scheduler']} "
                f"({ours['nfe']}) | {ours['rms_error']:.2e} | {ours['mode_flip']:.2f} | {ratio:.2f} | "
                f"{'yes' if met else 'no'} |")
    analytic = [row for row in results if row["problem"] == "analytic" and row.get("budget")]
    if analytic:
        lines += ["", "Analytic problem, Δlog p of the best configurations (nats per sample):", "",
                  "| NFE | built-in | FlowScope |", "|---|---|---|"]
        for budget in budgets:
            builtin, ours = best.get(("analytic", budget, "built-in")), best.get(("analytic", budget, "FlowScope"))
            if builtin and ours:
                lines.append(f"| {budget} | {builtin['loglik_shift']:+.3f} | {ours['loglik_shift']:+.3f} |")
    plain = best_rows([row for row in results if row.get("scheduler") not in (TRAJECTORY_ADAPTIVE, OPTIMIZED)
                       and row.get("sampler") not in FITTED_SOLVERS])
    lines += ["", "Without the pilot-based methods (no trajectory-adaptive or optimized schedule, no fitted solver): "
              "the best FlowScope sampler on a plain schedule, against the same built-in best:", "",
              "| problem | NFE | best FlowScope (sampler / schedule) | error | flips | ratio |", "|---|---|---|---|---|---|"]
    for problem in problems:
        for budget in budgets:
            builtin, ours = best.get((problem, budget, "built-in")), plain.get((problem, budget, "FlowScope"))
            if builtin and ours and builtin["rms_error"] > 0:
                lines.append(f"| {problem} | {budget} | {ours['sampler']} / {ours['scheduler']} ({ours['nfe']}) | "
                             f"{ours['rms_error']:.2e} | {ours['mode_flip']:.2f} | "
                             f"{ours['rms_error'] / builtin['rms_error']:.2f} |")
    failed = [row for row in results if row.get("failed")]
    if failed:
        lines += ["", "Configurations that could not run: " + "; ".join(
            f"{row['problem']}: {row['sampler']}/{row['scheduler']} ({row['failed'][:80]})" for row in failed[:20])]
    lines += ["", "Skipped built-ins: " + "; ".join(f"{k} ({v})" for k, v in SKIPPED_BUILTINS.items()),
              f"`{TRAJECTORY_ADAPTIVE}` is the trajectory-adaptive schedule; its 16-step Heun pilot (32 NFE, once "
              "per prompt) is not counted in the budget.",
              f"`{OPTIMIZED}` is the Optimized Schedule node: fitted on {PILOT_BATCH[mode]} samples of pilot noise "
              f"of seed {PILOT_SEED} (the table measures seed 0) from the pilot's best dropdown schedule, "
              f"{OPTIMIZER_EVALUATIONS[mode]} pilot runs "
              "of the sampler plus one reference solve, once per model, sampler and step count; not counted in the "
              "budget.",
              "`fs_fitted` / `fs_fitted_v` are the Fitted Solver node (base update data / velocity, order 3, history "
              "8, guidance history 2: with CFG the conditional and unconditional predictions are fitted apart) "
              f"fitted on the same pilot noise (seed {PILOT_SEED}) for each σ grid: one reference solve with "
              f"states at every grid σ plus 2 × steps model calls, not counted in the budget; on `{OPTIMIZED}` it "
              "uses the optimized grid with the lowest pilot error for that step count. "
              f"`fs_fitted / {FITTED_JOINT}` is the same node with `optimize_schedule` on: one reference solve stored "
              f"at 256 σ, then {JOINT_EVALUATIONS[mode]} candidate warps of the grid whose plain fit had the lowest "
              "pilot error, each fitted with its first model call at (r·x, r·σ_max) for r in "
              f"{', '.join(f'{r:g}' for r in first_call_starts)} (where r·σ_max lies above the grid's second σ) and "
              "scored by the best fit on the pilot (N model calls per fit); the table measures "
              f"the SIGMAS the node returns. `fs_fitted / {FITTED_REFINED}` is the node with both `optimize_schedule` "
              "and `refine_iterations` (" + ", ".join(
                  f"{count} at {budget} NFE" for budget, count in REFINE_ITERATIONS[mode].items()) + "), fitted on a "
              "pilot of (" + ", ".join(
                  f"{batch} samples at {budget} NFE" for budget, batch in REFINE_PILOT_BATCH[mode].items()) + "; "
              f"seed {PILOT_SEED}; the pilot batch is the node's latent batch): the same joint search from that best "
              "grid, then end-to-end Levenberg–Marquardt on all coefficients, every σ node after the first and the "
              "first call's (a, t) against the pilot endpoint (one pilot run per parameter per iteration, "
              "started at the step it first acts at), each step kept only if the error falls on both halves of "
              "the pilot (when none does at any damping, if their least-trimmed sums fall: each half without its "
              "largest 2 % of per-sample errors), the iterate with the lowest held-out error returned; when a "
              "refinement stops before its iterations are used up, the benchmark runs the node once more from the "
              "second-best plain-fit grid and keeps the run with the lower pilot error; the table measures the "
              "refined SIGMAS the node returns."]
    return "\n".join(lines) + "\n", summary


def chart(results, path):
    from ComfyUI_FlowScope.diagnostics import charts

    best = best_rows(results)
    problems = problem_order(results)
    series_list = []
    for problem in problems:
        for family in ("built-in", "FlowScope"):
            points = sorted((budget, row["rms_error"]) for (p, budget, f), row in best.items()
                            if p == problem and f == family)
            if points:
                series_list.append(charts.series(f"{problem} · {family}", [b for b, _ in points],
                                                 [e for _, e in points]))
    payload = charts.chart("Best endpoint error vs NFE", "NFE budget", "endpoint RMS error", series_list,
                           x_log=True, y_log=True)
    image = charts.render(payload, width=1000, height=650)
    from PIL import Image

    Image.fromarray((image[0].numpy() * 255).astype("uint8")).save(path)


def merged_runs(paths, mode):
    """(results, references, command) of the union of runs saved by this script: each of ``mode``, on problems no
    other part ran (their cells would otherwise be counted twice)."""
    results, references, commands = [], {}, []
    for path in paths:
        run = json.loads(path.read_text())
        if run.get("mode") != mode:
            raise SystemExit(f"quality.py --merge: {path} is a {run.get('mode')!r} run, not {mode!r}")
        overlap = sorted(set(run["references"]) & set(references))
        if overlap:
            raise SystemExit(f"quality.py --merge: {path} repeats the problems {overlap}")
        results += run["results"]
        references.update(run["references"])
        commands.append(run["command"])
    boot()  # the report names the Fitted Solver's first-call starts from the pack
    return results, references, " + ".join(commands) + " (parts merged with --merge)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few samplers, 3 problems, budgets 4 and 8 (CI)")
    parser.add_argument("--standard", action="store_true",
                        help="all problems and budgets, deterministic samplers only, 64 test samples "
                             "(98 min on 2 cores at 0c43af2 as two parallel 1-thread parts merged with --merge)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "benchmark_quality.md")
    parser.add_argument("--problems", nargs="+", choices=[name for name, _, _ in PROBLEMS],
                        help="only these problems (one-off measurements; the published table has all)")
    parser.add_argument("--budgets", nargs="+", type=int, choices=BUDGETS, help="only these NFE budgets")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 per process for parallel parts)")
    parser.add_argument("--merge", nargs="+", type=pathlib.Path, metavar="JSON",
                        help="write one report from the JSON files of runs of the same mode on disjoint problems "
                             "(e.g. the standard run as two processes with --threads 1 and --problems) instead "
                             "of running")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "standard" if args.standard else "full"
    command = "python benchmarks/quality.py" + ("" if mode == "full" else f" --{mode}")
    if args.problems:
        command += " --problems " + " ".join(f"'{name}'" for name in args.problems)
    if args.budgets:
        command += " --budgets " + " ".join(map(str, args.budgets))
    if args.merge:
        results, references, command = merged_runs(args.merge, mode)
    else:
        results, references = benchmark(mode, problems=args.problems, budgets=args.budgets)
    text, summary = report(results, references, command, mode)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "mode": mode, "references": references, "results": results}, indent=1))
    chart(results, args.out.with_suffix(".png"))
    met = sum(1 for s in summary.values() if s["met"])
    print(text)
    print(f"target met in {met} of {len(summary)} problem × budget cells; wrote {args.out}")


if __name__ == "__main__":
    main()
