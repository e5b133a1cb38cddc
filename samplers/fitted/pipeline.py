"""The whole fit of the Fitted Solver node as one function: reference solve, fit (or schedule search), refinement.

:func:`fit_pipeline` is pure (no ComfyUI): given the model as a sampler receives it (``model(x, σ·s_in) → D``),
the pilot latent scaled to σ_0 and the grid, it returns a :class:`FitResult`. It makes no sample; the solver it
returns samples with :func:`~.solver.sample_fitted`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..reference import reference_trajectory
from ..schedule_optimization import ScheduleSearch
from .cost import (MIN_REFERENCE_CALLS, SEARCH_KNOTS, ModelCallCounter, affordable_evaluations, fit_calls,
                   refinement_calls_per_iteration)
from .fit import SolverFit, fit_solver
from .presets import small_pilot_settings
from .refine import Refinement, refine_end_to_end
from .schedule_search import FIRST_CALL_STARTS, dense_reference, optimize_fitted
from .solver import FittedSolver, describe_first_call


@dataclass(frozen=True)
class FitSettings:
    """What to fit: the base update (``prediction``, ``order``), the model outputs per step (``history``), the
    reference tolerance, the schedule search's candidate grids (0: keep the grid; > 0: also warp it, and with
    refinement move each σ after the first and the first model call), the refinement's iterations (0: none),
    the guidance directions per step (CFG), the first calls ``(r·x, r·σ_0)`` the search tries, r in
    ``first_call_starts``, a budget of model calls (0: none; see :func:`fit_pipeline`), the least ridge of the
    per-step fits (``min_ridge``, :func:`~.fit.fit_solver`) and whether the small-pilot rule
    (:func:`~.presets.small_pilot_settings`) may raise ``min_ridge`` for a pilot of few latents
    (``small_pilot``)."""
    prediction: str = "data"
    order: int = 3
    history: int = 8
    reference_rtol: float = 1e-5
    schedule_evaluations: int = 0
    refine_iterations: int = 0
    guidance_history: int = 2
    first_call_starts: tuple = FIRST_CALL_STARTS
    max_model_calls: int = 0
    min_ridge: float = 0.0
    small_pilot: bool = True


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit_pipeline`: the solver and the grid it samples (``sigmas``, dtype and device of the
    input grid), the reference solve's model calls, the fit (pilot endpoint errors of the solver and of its base
    update), the refinement and the schedule search (None when not run)."""
    settings: FitSettings
    solver: FittedSolver
    sigmas: torch.Tensor
    reference_nfe: int
    fit: SolverFit
    refinement: Optional[Refinement] = None
    schedule_search: Optional[ScheduleSearch] = None
    model_calls: dict = field(default_factory=dict)
    cut_by_budget: tuple = ()
    small_pilot_note: str = ""

    def report(self, steps: int) -> str:
        """One line for the node's report and the log (``steps``: the input grid's step count)."""
        settings, solver, fit = self.settings, self.solver, self.fit
        guided = (f", guidance history {solver.guidance_history} (CFG split)" if solver.guidance_history else
                  ", no CFG split (unguided model)" if settings.guidance_history else "")
        ridge = f", least ridge {settings.min_ridge:g}" if settings.min_ridge else ""
        line = (f"{steps} steps, {settings.prediction} base of order {settings.order}, history {settings.history}"
                f"{ridge}{guided}: pilot endpoint RMS error: base {fit.base_error:.3e} → fitted {fit.error:.3e}"
                f"{self._fallback_note()}; reference {self.reference_nfe} NFE")
        if fit.held_out is not None:
            line += f"; {fit.held_out.describe()}"
        if self.small_pilot_note:
            line += f"; {self.small_pilot_note}"
        if self.refinement is not None:
            refined = self.refinement
            moved = f", {refined.moved_nodes} sigmas moved" if self.schedule_search is not None else ""
            line += (f"; end-to-end refinement: {refined.error_before:.3e} → {refined.error:.3e} "
                     f"(held-out half {refined.held_out_before:.3e} → {refined.held_out:.3e}, "
                     f"{refined.iterations} of {settings.refine_iterations} iterations kept{moved})")
        if self.schedule_search is not None:
            search = self.schedule_search
            line += (f"; schedule optimized for the fitted solver: input sigmas {search.base_error:.3e} → "
                     f"{search.error:.3e} ({search.evaluations} fits) — sample with this node's SIGMAS")
        if solver.first_call != (1.0, 1.0):
            line += f"; first model call at {describe_first_call(solver.first_call)}"
        if self.model_calls:
            spent = ", ".join(f"{name.replace('_', ' ')} {calls}" for name, calls in self.model_calls.items())
            budget = f" of max_model_calls {settings.max_model_calls}" if settings.max_model_calls else ""
            line += f"; model calls: {spent} = {sum(self.model_calls.values())}{budget}"
        for cut in self.cut_by_budget:
            line += f"; {cut}"
        return line


    def summary(self) -> dict:
        """The numbers of the report as plain fields (JSON-ready): pilot errors, fallback, reference model calls,
        the held-out estimate, the refinement and the schedule search (None when not run)."""
        fit, held_out, refined, search = self.fit, self.fit.held_out, self.refinement, self.schedule_search
        return {
            "steps": len(self.solver.sigmas) - 1, "history": self.settings.history,
            "min_ridge": self.settings.min_ridge, "small_pilot_note": self.small_pilot_note,
            "pilot_error": fit.error, "pilot_base_error": fit.base_error,
            "fallback": fit.fallback, "reference_nfe": self.reference_nfe,
            "guidance_history": self.solver.guidance_history, "first_call": list(self.solver.first_call),
            "held_out": None if held_out is None else {
                "error": held_out.error, "base_error": held_out.base_error, "uncertainty": held_out.uncertainty,
                "fold_errors": list(held_out.fold_errors), "latents": held_out.latents,
                "reliable": held_out.reliable, "reason": held_out.reason},
            "refinement": None if refined is None else {
                "error_before": refined.error_before, "error": refined.error,
                "held_out_before": refined.held_out_before, "held_out": refined.held_out,
                "iterations": refined.iterations, "moved_nodes": refined.moved_nodes},
            "schedule_search": None if search is None else {
                "base_error": search.base_error, "error": search.error, "evaluations": search.evaluations},
            "model_calls": dict(self.model_calls), "max_model_calls": self.settings.max_model_calls,
            "cut_by_budget": list(self.cut_by_budget),
        }

    def _fallback_note(self) -> str:
        fit = self.fit
        if not fit.fallback:
            return ""
        held_out = fit.held_out
        if held_out is not None and not held_out.error < held_out.base_error:
            return " (fit not better than its base on held-out pilot data: base kept)"
        return " (fit not better on the pilot: base kept)"


def fit_pipeline(model, x, sigmas, settings: FitSettings, extra_args=None, sigma_min=None, data_end_sigma=None,
                 guidance=None, disable=None) -> FitResult:
    """Fit a solver for ``sigmas`` on the pilot latent ``x`` (scaled to σ_0, as a sampler receives it).

    Without a schedule search: the reference states at the grid (:func:`~..reference.reference_trajectory`), then
    :func:`~.fit.fit_solver`. With one (``settings.schedule_evaluations`` > 0): a dense reference
    (:func:`~.schedule_search.dense_reference`) and :func:`~.schedule_search.optimize_fitted`. Then, with
    ``settings.refine_iterations`` > 0, :func:`~.refine.refine_end_to_end` — moving the σ nodes and the first call
    too when the schedule was searched. ``sigma_min``/``data_end_sigma``: the model family's reference end and σ = 0
    end (:mod:`..reference`, :mod:`..common`); ``guidance``: the CFG guidance direction source
    (:func:`~.fit.fit_solver`).

    The model calls of each stage are counted (``FitResult.model_calls``). ``settings.max_model_calls`` counts all
    of them, but the reference solve is never cut (its tolerance sets its cost) and the fit always runs: the
    schedule search and the refinement are cut to what remains after the stages before them (:mod:`.cost`;
    ``FitResult.cut_by_budget`` says what was cut, and by how much the reference and the fit alone went past the
    budget), so the result is the best fit the budget allows.

    With ``settings.small_pilot`` (the default) a pilot of fewer than
    :data:`~.presets.SMALL_PILOT_LATENTS` latents (``x.shape[0]``) is fitted with a ridge floor
    (:func:`~.presets.small_pilot_settings`); ``FitResult.settings`` are the settings used and
    ``FitResult.small_pilot_note`` says what changed."""
    settings, small_pilot_note = small_pilot_settings(settings, x.shape[0])
    counter = ModelCallCounter(model)
    steps = len(sigmas) - 1
    budget = settings.max_model_calls
    if budget:
        if budget - fit_calls(steps) < MIN_REFERENCE_CALLS:
            raise ValueError(f"max_model_calls = {budget} is too small for a {steps}-step fit: the fit takes "
                             f"{fit_calls(steps)} model calls and the reference solve at least "
                             f"{MIN_REFERENCE_CALLS} more (typically hundreds); raise it or set 0 (no limit)")
    calls, cuts = {}, []
    search = refinement = None
    evaluations, first_calls = settings.schedule_evaluations, [(r, r) for r in settings.first_call_starts]
    if evaluations > 0:
        reference, stats = dense_reference(counter, x, float(sigmas[0]), sigma_min, extra_args,
                                           rtol=settings.reference_rtol, data_end_sigma=data_end_sigma)
        calls["reference"] = counter.calls
        if budget:
            affordable = affordable_evaluations(budget - counter.calls - fit_calls(steps), steps, len(first_calls))
            if affordable < evaluations:
                cuts.append(f"schedule search cut to {affordable} of {evaluations} candidate grids by max_model_calls"
                            if affordable else "schedule search skipped: max_model_calls leaves too few model calls")
                evaluations = affordable
    else:
        targets, stats = reference_trajectory(counter, x, sigmas, extra_args, rtol=settings.reference_rtol,
                                              sigma_min=sigma_min, data_end_sigma=data_end_sigma)
        calls["reference"] = counter.calls
    if evaluations > 0:
        search, fit = optimize_fitted(counter, x, sigmas, reference, extra_args, settings.prediction, settings.order,
                                      settings.history, data_end_sigma, knots=SEARCH_KNOTS,
                                      max_evaluations=evaluations,
                                      guidance=guidance, guidance_history=settings.guidance_history,
                                      first_calls=first_calls, min_ridge=settings.min_ridge)
        grid, endpoint = search.sigmas, reference.states[-1]
        calls["schedule_search"] = counter.calls - calls["reference"]
    else:
        if settings.schedule_evaluations > 0:
            targets = reference.targets(sigmas.tolist())
        fit = fit_solver(counter, x, sigmas, targets, extra_args, settings.prediction, settings.order,
                         settings.history, data_end_sigma, disable=disable, guidance=guidance,
                         guidance_history=settings.guidance_history, min_ridge=settings.min_ridge)
        grid, endpoint = sigmas, targets[-1]
        calls["fit"] = counter.calls - calls["reference"]
    solver = fit.solver
    if budget and counter.calls > budget:
        cuts.append(f"the reference solve ({calls['reference']} model calls) and the fit went {counter.calls - budget} "
                    f"past max_model_calls (a looser reference_rtol makes the reference cheaper)")
    iterations = settings.refine_iterations
    if budget and iterations > 0:
        left, typical = budget - counter.calls, refinement_calls_per_iteration(steps, settings.history)
        if left < typical:
            cuts.append(f"refinement skipped: max_model_calls leaves {left} model calls, an iteration takes "
                        f"≈ {typical}")
            iterations = 0
        counter.limit = budget
    if iterations > 0:
        before = counter.calls
        refinement = refine_end_to_end(counter, x, grid, endpoint, solver, extra_args, iterations,
                                       move_grid=evaluations > 0, guidance=guidance, move_first_call=evaluations > 0)
        solver = refinement.solver
        grid = torch.tensor(solver.sigmas, dtype=grid.dtype, device=grid.device)
        calls["refinement"] = counter.calls - before
        if refinement.stopped_by_budget:
            cuts.append(f"refinement stopped by max_model_calls after {refinement.accepted} accepted steps (the "
                        f"best iterate is kept)")
    return FitResult(settings, solver, grid, stats.nfe, fit, refinement, search, calls, tuple(cuts),
                     small_pilot_note)
