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

The fit costs ``4N`` batched model calls besides the reference: the fit, the base run it is compared to, and two
cross-fitted runs that estimate its error on data it did not see (:class:`HeldOut`). A pilot endpoint error measures
the fit on the data it was fitted to and says nothing about overfitting: with one pilot latent it can be 1e-11 while
fresh seeds come out worse than the base. So the pilot is split in two halves (even/odd latents; the two halves of
the latent when there is only one), the coefficients are fitted on one half's rows while the whole pilot follows
them, and the endpoint error is measured on the other half — both ways. A fit that is not better than its base
update on the pilot, or on the held-out halves, falls back to the base (all ``c = 0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from ..common import ModelDerivative, SigmaSteps, check_choice, progress_range, validate_data_end_sigma, \
    validate_latent
from ..predictor_corrector import PREDICTIONS, _apply
from .least_squares import RIDGES, fold_rows, least_squares_coefficients, ridges_from, two_folds
from .solver import FittedSolver, _evaluate, _History, _latest_guidance, run_solver


MIN_LATENTS_TO_ESTIMATE = 4  # each held-out half is then fitted on 2 latents or more
MAX_FOLD_RATIO = 3.0  # held-out halves further apart than this make the estimate unreliable


@dataclass(frozen=True)
class HeldOut:
    """The cross-fitted estimate of a fit's endpoint error on data it did not see.

    ``fold_errors``: the RMS endpoint error on each half of the pilot of the solver fitted on the other half;
    ``error`` their RMS (each half fits on half the data, so it is, if anything, pessimistic for the full fit);
    ``base_error`` the base update's on the same rows; ``uncertainty`` half the spread of the two halves.
    ``reliable`` is False — with ``reason`` saying why — when the pilot is too small to stand for fresh seeds
    (fewer than :data:`MIN_LATENTS_TO_ESTIMATE` latents; one latent is split into halves of the same image) or
    the halves disagree by more than :data:`MAX_FOLD_RATIO`."""
    error: float
    base_error: float
    fold_errors: tuple
    latents: int
    reliable: bool
    reason: str = ""

    @property
    def uncertainty(self) -> float:
        return abs(self.fold_errors[0] - self.fold_errors[1]) / 2

    def describe(self) -> str:
        estimate = (f"held-out estimate {self.error:.3e} ± {self.uncertainty:.1e} (base {self.base_error:.3e}; "
                    f"halves {self.fold_errors[0]:.3e}, {self.fold_errors[1]:.3e})")
        return estimate if self.reliable else f"{self.reason}; {estimate}"


@dataclass(frozen=True)
class SolverFit:
    """A fitted solver with its pilot endpoint RMS errors: ``error`` the solver's (the lower of fit and base),
    ``base_error`` the unfitted base update's (None when the base run was skipped), ``held_out`` the cross-fitted
    estimate on unseen pilot data (None when skipped) and ``fallback`` (True when the fit was not better on the
    pilot or on the held-out estimate, and the base's zero coefficients were kept)."""
    solver: FittedSolver
    error: float
    base_error: Optional[float] = None
    fallback: bool = False
    held_out: Optional[HeldOut] = None


def _rms(a, b) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def _fit_steps(model, x, grid, sigmas, extra_args, disable, solver: FittedSolver, targets, guidance, rows=None,
               ridges=RIDGES):
    """Run ``solver``'s base update on ``grid`` and fit each step's coefficients to ``targets`` (see the module
    docstring, steps 2 and 3) — on the pilot's ``rows`` only when given (the whole pilot follows the coefficients),
    with the ridge chosen from ``ridges``.
    Returns ``(solver with the coefficients, endpoint)``; the solver has no guidance history when ``guidance``
    gives no direction after the first model call (an unguided model)."""
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
        features, residual = history.features(x), targets[i] - base
        floors = history.penalty_floors(features)
        if rows is not None:
            features, residual = [fold_rows(f, rows) for f in features], fold_rows(residual, rows)
        coefficients.append(least_squares_coefficients(features, residual, ridges=ridges, floors=floors))
        x = history.step(x, grid[i + 1], coefficients[i])
    return replace(solver, coefficients=coefficients), x


def _rms_rows(a, b, rows) -> float:
    return float(fold_rows((a - b).double(), rows).pow(2).mean().sqrt())


def held_out_estimate(model, x, grid, sigmas, targets, start: FittedSolver, base_end, extra_args=None,
                      guidance=None, ridges=RIDGES) -> HeldOut:
    """:class:`HeldOut` by two cross-fitted runs (2N model calls): coefficients fitted on one half of the pilot
    (:func:`~.least_squares.two_folds`) with the ridge chosen from ``ridges``, the endpoint error measured on the
    other; ``base_end`` is the base update's endpoint on the whole pilot."""
    folds = two_folds(x.shape[0], x[0].numel())
    errors, base_errors = [], []
    for fit_rows, check_rows in ((folds[0], folds[1]), (folds[1], folds[0])):
        _, end = _fit_steps(model, x, grid, sigmas, extra_args, True, start, targets, guidance, rows=fit_rows,
                            ridges=ridges)
        errors.append(_rms_rows(end, targets[-1], check_rows))
        base_errors.append(_rms_rows(base_end, targets[-1], check_rows))
    latents = x.shape[0]
    error = math.sqrt((errors[0] ** 2 + errors[1] ** 2) / 2)
    base_error = math.sqrt((base_errors[0] ** 2 + base_errors[1] ** 2) / 2)
    low, high = sorted(errors)
    if latents == 1:
        reason = ("pilot too small to estimate: one latent, split into two halves of the same image, which do not "
                  f"stand for fresh seeds (use {MIN_LATENTS_TO_ESTIMATE} or more latents)")
    elif latents < MIN_LATENTS_TO_ESTIMATE:
        reason = (f"pilot too small to estimate: {latents} latents, each half fitted on {latents // 2} (use "
                  f"{MIN_LATENTS_TO_ESTIMATE} or more latents)")
    elif not high <= MAX_FOLD_RATIO * low:
        reason = (f"estimate unreliable: the held-out halves disagree ({low:.3e} vs {high:.3e}); a larger pilot "
                  f"narrows it")
    else:
        reason = ""
    return HeldOut(error, base_error, tuple(errors), latents, not reason, reason)


def fit_solver(model, x, sigmas, targets, extra_args=None, prediction="data", order=2, history=3,
               data_end_sigma=None, disable=None, compare_base=True, guidance=None,
               guidance_history=2, first_call=(1.0, 1.0), held_out=True, min_ridge=0.0) -> SolverFit:
    """Fit a :class:`~.solver.FittedSolver` for ``sigmas`` (ending in 0) on the pilot latent ``x`` (already scaled
    to σ_0, as a sampler receives it) against ``targets`` = the reference states at ``sigmas[1:]``
    (:func:`~..reference.reference_trajectory`). ``prediction``/``order``: the base update; ``history``: model
    outputs per feature list (1–8). ``compare_base=False`` skips the base run (N model calls; the result then has
    no ``base_error``) and the held-out estimate; ``held_out=False`` skips only the estimate (2N model calls).

    ``guidance``: for a classifier-free-guided model ``D = D_u + w·(D_c − D_u)``, a callable that returns the
    guidance direction ``G = D_c − D_u`` of the model call just made (None when the model is not guided). The
    fit then has the latest ``guidance_history`` G's (0–8) as features too — the conditional and unconditional
    predictions apart, so a step may extrapolate them differently — and the solver needs that source to sample
    (its ``guidance_history`` is 0 when the source gave none). ``first_call``: the (a, t) of the first model
    call (:func:`~.solver._evaluate`). ``min_ridge``: the least ridge (shrinkage toward the base update, c = 0)
    the cross-validated ridge of each step may take (:func:`~.least_squares.ridges_from`; 0: any of
    :data:`~.least_squares.RIDGES`)."""
    who = "fit_solver"
    check_choice(prediction, PREDICTIONS, who, "prediction")
    if order not in (1, 2, 3, 4):
        raise ValueError(f"{who}: order = {order!r} must be 1, 2, 3 or 4")
    if history not in range(1, 9):
        raise ValueError(f"{who}: history = {history!r} must be between 1 and 8")
    if guidance_history not in range(0, 9):
        raise ValueError(f"{who}: guidance_history = {guidance_history!r} must be between 0 and 8")
    if not (isinstance(min_ridge, (int, float)) and min_ridge >= 0):
        raise ValueError(f"{who}: min_ridge = {min_ridge!r} must be a number ≥ 0")
    ridges = ridges_from(min_ridge)
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
    solver, fitted_end = _fit_steps(model, x, grid, sigmas, extra_args, disable, start, targets, guidance,
                                    ridges=ridges)
    error = _rms(fitted_end, targets[-1])
    if not compare_base:
        return SolverFit(solver, error)
    base = replace(solver, coefficients=[[0.0] * len(c) for c in solver.coefficients])
    base_end = run_solver(model, x, grid, sigmas, extra_args, None, disable, base, guidance=guidance)
    base_error = _rms(base_end, targets[-1])
    estimate = (held_out_estimate(model, x, grid, sigmas, targets, start, base_end, extra_args, guidance, ridges)
                if held_out else None)
    fallback = not error < base_error or (estimate is not None and not estimate.error < estimate.base_error)
    return SolverFit(base if fallback else solver, base_error if fallback else error, base_error, fallback,
                     estimate)
