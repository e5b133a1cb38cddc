"""SAMPLER nodes: one node per sampler family, each returning a ``comfy.samplers.KSAMPLER`` built from a
samplers/ function (so it plugs into SamplerCustom / SamplerCustomAdvanced and the recorder)."""
from __future__ import annotations

import dataclasses
import logging


import comfy.samplers

from .. import samplers as core
from ..samplers.fitted import FitSettings, fit_pipeline
from ..samplers.fitted.cost import describe_plan, planned_calls
from ..samplers.fitted.presets import PRESETS, preset_settings
from .comfy_io import io
from .comfy_sampling import comfy_sampler_function, plan_with_guided_model, require_full_schedule, with_guidance_probe
from .model_identity import fit_provenance, latent_batch

FIXED_STEP_METHODS = ["euler", "heun", "midpoint", "ralston", "rk3", "rk4", "rk38"]
CATEGORY = "FlowScope/samplers"


def make_sampler(fn, **options):
    return comfy.samplers.KSAMPLER(comfy_sampler_function(fn), extra_options=options)


def fitted_solver_sampler(solver) -> comfy.samplers.KSAMPLER:
    """The SAMPLER of a fitted solver, fed with each model call's guidance direction (as the fit was)."""
    return make_sampler(with_guidance_probe(core.sample_fitted), solver=solver)


def _schema(node_id, name, description, inputs):
    return io.Schema(node_id=node_id, display_name=f"FlowScope · {name}", category=CATEGORY,
                     description=description, inputs=inputs, outputs=[io.Sampler.Output()])


class RungeKuttaSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("FlowScopeSamplerRungeKutta", "Runge–Kutta Sampler",
                       "Explicit Runge–Kutta from a Butcher tableau. NFE per step = stages (euler 1, heun/midpoint/"
                       "ralston 2, rk3 3, rk4/rk38 4). On flow models the last step to σ = 0 keeps the full order.",
                       [io.Combo.Input("method", options=FIXED_STEP_METHODS, default="heun",
                                       tooltip="Order: euler 1; heun, midpoint, ralston 2; rk3 3; rk4, rk38 4.")])

    @classmethod
    def execute(cls, method) -> io.NodeOutput:
        return io.NodeOutput(make_sampler(core.sample_rk, method=method))


class AdaptiveSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerAdaptive", "Adaptive Sampler",
            "Embedded Runge–Kutta pair with a PI step-size controller. The SIGMAS only give the interval, "
            "the initial step size and the points where previews are sent; the controller picks the steps.",
            [io.Combo.Input("method", options=["dopri5", "bosh3"], default="dopri5",
                            tooltip="dopri5: Dormand–Prince 5(4), 6 NFE/step; bosh3: Bogacki–Shampine 3(2), 3 NFE/step."),
             io.Float.Input("rtol", default=1e-3, min=1e-8, max=1.0, step=1e-4,
                            tooltip="Relative tolerance per step. 1e-2 fast preview, 1e-3 default, 1e-5 reference."),
             io.Float.Input("atol", default=1e-4, min=1e-10, max=1.0, step=1e-5,
                            tooltip="Absolute tolerance per step (latent units)."),
             io.Combo.Input("error_norm", options=["batch", "per_sample"], default="batch",
                            tooltip="batch: RMS over the whole batch; per_sample: the worst sample decides."),
             io.Int.Input("max_nfe", default=1000, min=8, max=100000,
                          tooltip="Hard cap on model calls; when reached the rest is finished on the SIGMAS grid "
                                  "with fixed steps and a warning is logged."),
             io.Int.Input("nfe_budget", default=0, min=0, max=100000,
                          tooltip="0 = off. Otherwise the total NFE stays within this budget (see README).")])

    @classmethod
    def execute(cls, method, rtol, atol, error_norm, max_nfe, nfe_budget) -> io.NodeOutput:
        return io.NodeOutput(make_sampler(core.sample_adaptive, method=method, rtol=rtol, atol=atol,
                                          error_norm=error_norm, max_nfe=max_nfe,
                                          nfe_budget=nfe_budget or None))


class MultistepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerAdamsBashforth", "Adams–Bashforth Sampler",
            "Variable-step Adams–Bashforth (multistep = momentum): 1 NFE per step after a high-order warm start.",
            [io.Int.Input("order", default=2, min=2, max=4,
                          tooltip="2, 3 or 4. Higher orders pay off from ~10 steps on smooth (flow) paths."),
             io.Combo.Input("warm_start", options=["runge_kutta", "lower_order"], default="runge_kutta", optional=True,
                            tooltip="runge_kutta: first order−1 steps by Heun/RK4 (nominal order, 2–4 NFE "
                                    "each); lower_order: Euler, AB2, … (1 NFE per step from the start; best "
                                    "for few steps, order 2).")])

    @classmethod
    def execute(cls, order, warm_start="runge_kutta") -> io.NodeOutput:
        return io.NodeOutput(make_sampler(core.sample_adams_bashforth, order=order, warm_start=warm_start))


class PredictorCorrectorSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerPredictorCorrector", "Predictor–Corrector Multistep Sampler",
            "Multistep predictor plus a one-point-higher corrector that reuses the next model call (PEC, "
            "UniPC-style): order + 1 at 1 NFE per step. velocity = Adams–Bashforth–Moulton in σ (flow models); "
            "data = exponential integrator on the denoised prediction in log σ (EPS/VE models); noise = "
            "exponential integrator on the noise prediction (velocity) in log σ (EPS models, karras-type grids); vp = "
            "velocity interpolated in the VP time of DEIS.",
            [io.Combo.Input("prediction", options=list(core.MULTISTEP_PREDICTIONS), default="velocity",
                            tooltip="velocity (fs_abm), vp (fs_vp_abm): flow models; data (fs_exp_abm) and noise "
                                    "(fs_noise_abm): SD1.5/SDXL-type models."),
             io.Int.Input("order", default=2, min=1, max=4,
                          tooltip="Points of the predictor; the corrector adds one (order 2 → third order)."),
             io.Boolean.Input("corrector", default=True,
                              tooltip="Off: the plain multistep predictor (Adams–Bashforth / DPM-Solver-type)."),
             io.Float.Input("max_amplification", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                            tooltip="Variable order: each step uses the most points whose extrapolation amplifies "
                                    "the model outputs' deviations by at most this (≥ 1); 0: fixed order."),
             io.Float.Input("corrector_max_log_step", default=0.0, min=0.0, max=10.0, step=0.05, optional=True,
                            tooltip="The corrector acts only on steps with log(σ/σ_next) at most this (and on "
                                    "the first step); 0: on every step (fs_noise_abm uses 0.5)."),
             io.Combo.Input("warm_start", options=list(core.WARM_STARTS), default="lower_order", optional=True,
                            tooltip="lower_order: 1 model call per step from the start (order 3+ is reached a "
                                    "few steps in). runge_kutta: the first order − 2 steps are RK steps (1–3 extra "
                                    "calls each), full order from σ_max; pays only at many steps.")])

    @classmethod
    def execute(cls, prediction, order, corrector, max_amplification=0.0,
                corrector_max_log_step=0.0, warm_start="lower_order") -> io.NodeOutput:
        if 0 < max_amplification < 1:
            raise ValueError("FlowScope · Predictor–Corrector Multistep Sampler, input 'max_amplification': "
                             f"{max_amplification} is below 1 (no update amplifies less); use 0 for a fixed order")
        return io.NodeOutput(make_sampler(core.sample_multistep_pc, prediction=prediction, order=order,
                                          corrector=corrector, max_amplification=max_amplification or None,
                                          corrector_max_log_step=corrector_max_log_step or None,
                                          warm_start=warm_start))


class OptimizerSampler(io.ComfyNode):
    KINDS = ["heavy_ball", "nesterov", "gradient_estimation", "secant"]

    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerOptimizer", "Optimizer-Style Sampler",
            "Sampling as optimisation: Euler is gradient descent with learning rate Δσ. heavy_ball: momentum "
            "(β = 0.5 is Adams–Bashforth 2); nesterov: look-ahead evaluation (0.5 = second order); "
            "gradient_estimation: γ-extrapolated velocity (ComfyUI's γ = 2; γ = 1.5 is AB2); secant: "
            "curvature-aware (quasi-Newton) step length.",
            [io.Combo.Input("kind", options=cls.KINDS, default="heavy_ball"),
             io.Float.Input("beta", default=0.5, min=0.0, max=0.99, step=0.01,
                            tooltip="heavy_ball momentum β in [0, 0.99]; 0.5 = AB2 (order 2), others order 1."),
             io.Float.Input("gamma", default=2.0, min=1.0, max=3.0, step=0.05,
                            tooltip="gradient_estimation γ in [1, 3]; 1 = Euler, 1.5 = AB2, 2 = ComfyUI default."),
             io.Float.Input("lookahead", default=0.5, min=0.0, max=0.95, step=0.05,
                            tooltip="nesterov look-ahead fraction of the step; 0.5 = second order."),
             io.Boolean.Input("grid_aware", default=True,
                              tooltip="Scale β/γ by the step-size ratio so the AB2 equivalence holds on "
                                      "non-uniform schedules (karras, shifted)."),
             io.Float.Input("max_curvature_step", default=2.0, min=0.1, max=10.0, step=0.1,
                            tooltip="secant: clip of the curvature·step product; smaller is more conservative.")])

    @classmethod
    def execute(cls, kind, beta, gamma, lookahead, grid_aware, max_curvature_step) -> io.NodeOutput:
        if kind == "heavy_ball":
            sampler = make_sampler(core.sample_heavy_ball, beta=beta, grid_aware=grid_aware)
        elif kind == "nesterov":
            sampler = make_sampler(core.sample_nesterov, lookahead=lookahead)
        elif kind == "gradient_estimation":
            sampler = make_sampler(core.sample_gradient_estimation, gamma=gamma, grid_aware=grid_aware)
        elif kind == "secant":
            sampler = make_sampler(core.sample_secant, max_curvature_step=max_curvature_step)
        else:
            raise ValueError(f"FlowScope · Optimizer-Style Sampler, input 'kind': {kind!r} is not one of "
                             f"{', '.join(cls.KINDS)}")
        return io.NodeOutput(sampler)


class LangevinSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerLangevinPC", "Langevin Predictor–Corrector",
            "Predictor step + Langevin corrector steps (noisy gradient ascent on log p, Song et al. 2021) for "
            "diffusion and flow models. NFE per step = predictor stages + corrector_steps.",
            [io.Combo.Input("predictor", options=FIXED_STEP_METHODS, default="euler"),
             io.Int.Input("corrector_steps", default=1, min=0, max=10,
                          tooltip="Langevin steps after each predictor step; 0 = plain ODE sampling."),
             io.Float.Input("snr", default=0.16, min=0.01, max=1.0, step=0.01,
                            tooltip="Signal-to-noise ratio r of the step rule ε = 2(r‖z‖/‖g‖)²; 0.05–0.2 is safe.")])

    @classmethod
    def execute(cls, predictor, corrector_steps, snr) -> io.NodeOutput:
        return io.NodeOutput(make_sampler(core.sample_langevin_pc, predictor=predictor,
                                          corrector_steps=corrector_steps, snr=snr))


class StochasticSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            "FlowScopeSamplerStochastic", "DDIM / Flow SDE Sampler",
            "DDIM data-prediction steps; with η > 0 marginal-preserving noise is injected (stochastic sampling "
            "of flow models and DDIM-η of diffusion models). 1 NFE per step.",
            [io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.05,
                            tooltip="0 = deterministic DDIM (= Euler in x0 form); 1 = full posterior noise."),
             io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.01,
                            tooltip="Scale of the injected noise; 1 keeps the marginal exactly.")])

    @classmethod
    def execute(cls, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(make_sampler(core.sample_ddim, eta=eta, s_noise=s_noise))


class FittedSolverSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeFittedSolver", display_name="FlowScope · Fitted Solver", category=CATEGORY,
            description="Fits a 1-NFE-per-step multistep solver to YOUR model, guider and SIGMAS (Bespoke "
                        "Non-Stationary-style): a tight reference solve from the pilot noise, then per-step "
                        "least-squares coefficients on the model-output history that keep the solver on the "
                        "reference trajectory. The SAMPLER only runs on these SIGMAS (same steps); it keeps its base "
                        "update unless the fit is better on the pilot and on held-out pilot data. Costs the "
                        "reference (hundreds to thousands of model calls) plus 4 × steps once — save it with Save "
                        "Fitted Solver and reuse it for every seed.",
            inputs=[io.Noise.Input("noise", tooltip="Pilot noise; a seed other than the final run's generalizes."),
                    io.Guider.Input("guider"),
                    io.Sigmas.Input("sigmas", tooltip="The schedule the solver will sample (any scheduler; must "
                                                      "end in 0)."),
                    io.Latent.Input("latent_image"),
                    io.Combo.Input("prediction", options=list(core.PREDICTIONS), default="data",
                                   tooltip="Base update: data = exponential multistep on the denoised prediction "
                                           "in log σ (DPM-Solver++-type); velocity = Adams–Bashforth in σ."),
                    io.Int.Input("order", default=3, min=1, max=4, tooltip="Points of the base update."),
                    io.Int.Input("history", default=8, min=1, max=8,
                                 tooltip="Model outputs each step's correction may combine (1 + history "
                                         "coefficients per step)."),
                    io.Float.Input("reference_rtol", default=1e-5, min=1e-9, max=1e-2, step=1e-6,
                                   tooltip="Relative tolerance of the reference solve (Dormand–Prince 5(4))."),
                    io.Boolean.Input("optimize_schedule", default=False, optional=True,
                                     tooltip="Also warp the sigmas (as the Optimized Schedule node) for the lowest "
                                             "error of the solver fitted on them, and with refine_iterations let "
                                             "the refinement move each sigma after the first too, and where the "
                                             "first model call is made (a·x at t·σ_max: at σ_max a flow model sees "
                                             "pure noise); then sample with the SIGMAS output."),
                    io.Int.Input("max_evaluations", default=60, min=1, max=5000, optional=True,
                                 tooltip="optimize_schedule: candidate grids (each costs one fit, steps model "
                                         "calls)."),
                    io.Int.Input("refine_iterations", default=0, min=0, max=20, optional=True,
                                 tooltip="End-to-end refinement (0 = off): Levenberg–Marquardt on all coefficients "
                                         "against the pilot endpoint, checked on a held-out half of the pilot. "
                                         "Each iteration costs ≈ 4.5 × steps² model calls (history 8; ≈ 5 × steps² "
                                         "when it moves the sigmas too): for ≤ 16 steps on large models. Give it a "
                                         "larger pilot batch than the plain fit (a few latents overfit)."),
                    io.Int.Input("guidance_history", default=2, min=0, max=8, optional=True,
                                 tooltip="With CFG (cfg ≠ 1): the guidance directions (conditional minus "
                                         "unconditional prediction) of this many latest model calls are fitted "
                                         "as features too, so a step can extrapolate the two predictions "
                                         "differently (0 = off; nothing changes at cfg 1)."),
                    io.Combo.Input("preset", options=list(PRESETS), default="custom", optional=True,
                                   tooltip="fast: the plain fit; balanced: + schedule search (60 grids; needs a "
                                           "pilot of 16+ latents); best: + end-to-end refinement (needs 64+); "
                                           "custom: the inputs above. See docs/fitted_solver.md."),
                    io.Int.Input("max_model_calls", default=0, min=0, max=10_000_000, optional=True,
                                 tooltip="0 = no limit. Otherwise the schedule search and the refinement are cut "
                                         "to what the reference solve and the fit leave (the report says what was "
                                         "cut).")],
            outputs=[io.Sampler.Output(), io.String.Output(display_name="report"),
                     io.Sigmas.Output(display_name="sigmas")])

    @classmethod
    def execute(cls, noise, guider, sigmas, latent_image, prediction, order, history, reference_rtol,
                optimize_schedule=False, max_evaluations=60, refine_iterations=0,
                guidance_history=2, preset="custom", max_model_calls=0) -> io.NodeOutput:
        who = "FlowScope · Fitted Solver"
        require_full_schedule(sigmas, who, "fit a full schedule")
        steps, latents = len(sigmas) - 1, latent_batch(latent_image)
        settings = FitSettings(prediction, order, history, reference_rtol,
                               max_evaluations if optimize_schedule else 0, refine_iterations, guidance_history,
                               max_model_calls=max_model_calls)
        try:
            settings, preset_note = preset_settings(preset, settings, steps, latents)
        except ValueError as error:
            raise ValueError(f"{who}, input 'preset': {error}") from error
        planned = planned_calls(steps, settings.history, settings.schedule_evaluations, settings.refine_iterations,
                                len(settings.first_call_starts))
        logging.info("%s: fitting %d steps on %d pilot latents (preset %s); cost: %s", who, steps, latents, preset,
                     describe_plan(planned, max_model_calls))
        try:
            result = plan_with_guided_model(guider, sigmas.cpu(), latent_image, noise, solver_fit_plan(settings))
        except ValueError as error:
            raise ValueError(f"{who}: {error}") from error
        final_error = result.refinement.error if result.refinement is not None else result.fit.error
        pilot = {"pilot_error": f"{final_error:.3e}", "pilot_base_error": f"{result.fit.base_error:.3e}"}
        solver = dataclasses.replace(result.solver, provenance={**fit_provenance(guider, latent_image), **pilot})
        report = result.report(steps) + (f"; {preset_note}" if preset_note else "")
        logging.info("%s: %s", who, report)
        fitted_sigmas = result.sigmas.detach().cpu().to(sigmas.dtype)
        summary = {**result.summary(), "preset": preset, "preset_note": preset_note, "planned_model_calls": planned}
        return io.NodeOutput(fitted_solver_sampler(solver), report, fitted_sigmas, ui={"flowscope_fit": [summary]})


def solver_fit_plan(settings: FitSettings):
    """The plan (:func:`~.comfy_sampling.plan_with_guided_model`) of the Fitted Solver node: on the pilot latent
    and the real guided model, :func:`~..samplers.fitted.fit_pipeline` with the model family's reference end and
    σ = 0 end and the CFG guidance directions of a :class:`~.comfy_sampling.GuidanceProbe`. Returns its
    :class:`~..samplers.fitted.FitResult`."""

    def plan(run):
        def fit(model, x, sigmas, extra_args, family, guidance):
            return x, fit_pipeline(model, x, sigmas, settings, extra_args, sigma_min=family.reference_sigma_min,
                                   data_end_sigma=family.data_end_sigma, guidance=guidance, disable=run.disable_pbar)

        return run.call(fit, guidance=True)[1]

    return plan


NODES = [RungeKuttaSampler, AdaptiveSampler, MultistepSampler, PredictorCorrectorSampler, OptimizerSampler, LangevinSampler,
         StochasticSampler, FittedSolverSampler]
