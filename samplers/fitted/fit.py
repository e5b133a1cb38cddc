"""Fitting a :class:`~.solver.FittedSolver`: per-step coefficients by linear least squares against a reference
trajectory (1 NFE per step).

Bespoke Non-Stationary solvers (Shaul et al. 2024, "Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion
and Flow Models", arXiv:2403.01329) learn such coefficients per step for one model and step count by gradient
descent; here they are fitted the cheap way, one step at a time:

1. a reference solve (tight Dormand–Prince, :func:`~..reference.reference_trajectory`) from pilot noise gives the
   exact states ``R_n`` at every σ_n of the grid;
2. the solver runs on the same pilot noise. At step n it has its own state ``x_n`` and the model outputs
   ``D_n, D_{n−1}, …``; the coefficients ``c_n`` minimize ``‖b_n + Σ_k c_{n,k} f_k − R_{n+1}‖²`` over the whole
   pilot batch (:func:`~.least_squares.least_squares_coefficients`);
3. the solver moves to ``x_{n+1} = b_n + Σ_k c_{n,k} f_k`` — its own state, not the reference's, so later steps
   learn to correct what earlier steps leave (no teacher forcing).

The fit costs ``2N`` batched model calls besides the reference (the fit and the base run it is compared to). Its
coefficients are a few scalars per step, so a pilot batch of a few latents generalizes to other seeds; a fit whose
pilot endpoint error is not below the base update's falls back to the base (all ``c = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..common import ModelDerivative, SigmaSteps, check_choice, progress_range, validate_data_end_sigma, \
    validate_latent
from ..predictor_corrector import PREDICTIONS, _apply
from .least_squares import least_squares_coefficients
from .solver import FittedSolver, _evaluate, _History, _latest_guidance, run_solver


@dataclass(frozen=True)
class SolverFit:
    """A fitted solver with its pilot endpoint RMS errors: ``error`` the solver's (the lower of fit and base),
    ``base_error`` the unfitted base update's (None when the base run was skipped) and ``fallback`` (True when the
    fit was not better and the base's zero coefficients were kept)."""
    solver: FittedSolver
    error: float
    base_error: Optional[float] = None
    fallback: bool = False


def _rms(a, b) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def _fit_steps(model, x, grid, sigmas, extra_args, disable, solver: FittedSolver, targets, guidance):
    """Run ``solver``'s base update on ``grid`` and fit each step's coefficients to ``targets`` (see the module
    docstring, steps 2 and 3). Returns ``(solver with the coefficients, endpoint)``; the solver has no guidance
    history when ``guidance`` gives no direction after the first model call (an unguided model)."""
    derivative = ModelDerivative(model, x, sigmas, extra_args, None)
    coefficients, history = [], None
    for i in progress_range(len(grid) - 1, disable=disable):
        evaluation = _evaluate(derivative, x, grid[i], solver, i == 0)
        if history is None:
            if guidance is None or guidance() is None:
                solver = replace(solver, guidance_history=0)  # an unguided model: nothing to split
            history = _History(solver)
        history.push(grid[i], evaluation, _latest_guidance(guidance, solver))
        x_weight, terms = history.base_terms(grid[i + 1])
        base = _apply(x, x_weight, *zip(*terms))
        features = history.features(x)
        coefficients.append(least_squares_coefficients(features, targets[i] - base,
                                                       floors=history.penalty_floors(features)))
        x = history.step(x, grid[i + 1], coefficients[i])
    return replace(solver, coefficients=coefficients), x


def fit_solver(model, x, sigmas, targets, extra_args=None, prediction="data", order=2, history=3,
               data_end_sigma=None, disable=None, compare_base=True, guidance=None,
               guidance_history=2, first_call=(1.0, 1.0)) -> SolverFit:
    """Fit a :class:`~.solver.FittedSolver` for ``sigmas`` (ending in 0) on the pilot latent ``x`` (already scaled
    to σ_0, as a sampler receives it) against ``targets`` = the reference states at ``sigmas[1:]``
    (:func:`~..reference.reference_trajectory`). ``prediction``/``order``: the base update; ``history``: model
    outputs per feature list (1–8). ``compare_base=False`` skips the base run (N model calls; the result then has
    no ``base_error``).

    ``guidance``: for a classifier-free-guided model ``D = D_u + w·(D_c − D_u)``, a callable that returns the
    guidance direction ``G = D_c − D_u`` of the model call just made (None when the model is not guided). The
    fit then has the latest ``guidance_history`` G's (0–8) as features too — the conditional and unconditional
    predictions apart, so a step may extrapolate them differently — and the solver needs that source to sample
    (its ``guidance_history`` is 0 when the source gave none). ``first_call``: the (a, t) of the first model
    call (:func:`~.solver._evaluate`)."""
    who = "fit_solver"
    check_choice(prediction, PREDICTIONS, who, "prediction")
    if order not in (1, 2, 3, 4):
        raise ValueError(f"{who}: order = {order!r} must be 1, 2, 3 or 4")
    if history not in range(1, 9):
        raise ValueError(f"{who}: history = {history!r} must be between 1 and 8")
    if guidance_history not in range(0, 9):
        raise ValueError(f"{who}: guidance_history = {guidance_history!r} must be between 0 and 8")
    steps = SigmaSteps(sigmas, who)
    validate_latent(x, who)
    grid = steps.grid
    if grid[-1] != 0:
        raise ValueError(f"{who}: the grid must end in 0 (got {grid[-1]:g}); fit a full schedule")
    if steps.steps == 0:
        raise ValueError(f"{who}: the grid has no step (every σ is 0); fit a full schedule")
    if len(targets) != len(sigmas) - 1 or any(t.shape != x.shape for t in targets):
        raise ValueError(f"{who}: need {len(sigmas) - 1} reference states shaped like x, got {len(targets)}")
    targets = [targets[k - 1] for k in steps.keep[1:]]  # the states at the kept σ (equal σ, equal states)
    sigmas = steps.sigmas
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    start = FittedSolver(tuple(grid), prediction, order, history, denoise_end=data_end_sigma is None,
                         guidance_history=guidance_history, first_call=tuple(first_call))
    solver, fitted_end = _fit_steps(model, x, grid, sigmas, extra_args, disable, start, targets, guidance)
    error = _rms(fitted_end, targets[-1])
    if not compare_base:
        return SolverFit(solver, error)
    base = replace(solver, coefficients=[[0.0] * len(c) for c in solver.coefficients])
    base_end = run_solver(model, x, grid, sigmas, extra_args, None, disable, base, guidance=guidance)
    base_error = _rms(base_end, targets[-1])
    fallback = not error < base_error
    return SolverFit(base if fallback else solver, min(error, base_error), base_error, fallback)
