"""The quality benchmark's problems and measurements: a demo MODEL with fixed noise run through ComfyUI's
``CFGGuider.sample`` (:class:`Problem`), its tight ``fs_dopri5`` reference, the endpoint-error metrics, the
NFE-budget step search, and the pilot-based σ grids and fits (trajectory-adaptive schedule, Optimized Schedule,
Fitted Solver) computed on the pilot noise of seed :data:`~benchmarks.quality_setup.PILOT_SEED`.
"""
from __future__ import annotations

import math

import torch

from benchmarks.comfy_inprocess import CountingGuider, pack_module
from benchmarks.harness import ROOT, fit_solver
from benchmarks.quality_setup import FITTED_REFINED, PILOT_SEED


def is_analytic(model_name: str) -> bool:
    """The exact Gaussian-mixture demo models (analytic, analytic-narrow)."""
    return model_name.startswith("analytic")


class Problem:
    def __init__(self, name, model_name, cfg, batch, seed=0):
        import comfy.sample

        networks = pack_module("models.networks")
        self.name, self.model_name, self.cfg = name, model_name, cfg
        self.model = pack_module("nodes.demo_models").load_demo_model(model_name)
        self.model_sampling = self.model.get_model_object("model_sampling")
        labels = torch.arange(batch) % 10
        positive = torch.nn.functional.one_hot(labels, networks.CONDITION_DIM).float()[:, None]
        if is_analytic(model_name):  # the whole mixture: an unconditional exact flow
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
        self.mixtures = {}

    def mixture(self, model_name: str):
        if model_name not in self.mixtures:
            from safetensors.torch import load_file

            gaussian_mixture = pack_module("models.gaussian_mixture")
            weights = load_file(str(ROOT / "models" / f"{model_name}.safetensors"))
            self.mixtures[model_name] = gaussian_mixture.GaussianMixture(
                weights["means"].double(), weights["stds"].double(), weights["log_weights"].double())
        return self.mixtures[model_name]

    def modes(self, problem: Problem, samples):
        if is_analytic(problem.model_name):
            return self.mixture(problem.model_name).component_of(samples.double())
        return self.classifier.predict(samples)

    def log_likelihood(self, problem: Problem, samples):
        return self.mixture(problem.model_name).log_prob(samples.double(), 0.0)


def metrics(problem, labeler, samples, reference, reference_modes):
    """Endpoint RMS and median per-sample error (the Compare Samplers node's measure), mode-flip rate and, on the
    analytic problem, the mean exact log-likelihood shift against the reference samples."""
    from ComfyUI_FlowScope.diagnostics.error_vs_nfe import endpoint_errors

    result = {**endpoint_errors(samples, reference),
              "mode_flip": float((labeler.modes(problem, samples) != reference_modes).float().mean())}
    if is_analytic(problem.model_name):
        result["loglik_shift"] = float(labeler.log_likelihood(problem, samples).mean()
                                       - labeler.log_likelihood(problem, reference).mean())
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
    prediction, order, history = configuration
    result, sampler = fit_solver(pilot.problem.run, sigmas.clone(), prediction, order, history, 1e-6,
                                 schedule_evaluations, refine_iterations)
    return sampler, result.sigmas.float(), result


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

