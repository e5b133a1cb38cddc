"""Schedule and coefficients together: the σ grid searched for the lowest pilot error of the solver fitted on it.

A search over monotone warps of a base grid (:func:`~..schedule_optimization.optimize_schedule`, Nelder–Mead) needs
the reference states at every candidate grid; one dense reference solve (:func:`dense_reference`) gives them all by
interpolation (:class:`DenseReference`), so a candidate costs one fit (N model calls) and no new reference solve.
"""
from __future__ import annotations

import math

import torch

from ..common import half_combination, is_half
from ..reference import reference_trajectory
from ..schedule_optimization import ScheduleSearch, optimize_schedule
from .fit import SolverFit, fit_solver
from .solver import first_call_fits


class DenseReference:
    """Reference states at many σ (descending, ending in 0 = the endpoint), interpolated in between by the cubic
    Lagrange polynomial in σ through the four nearest nodes: the targets of any grid inside the range without
    a new reference solve (what :func:`optimize_fitted` needs for every candidate grid): cubic Lagrange
    interpolation."""

    def __init__(self, sigmas, states):
        if len(sigmas) != len(states) or len(sigmas) < 4 or sigmas[-1] != 0:
            raise ValueError("DenseReference: needs ≥ 4 σ nodes ending in 0 and one state per node")
        self.sigmas, self.states = list(sigmas), list(states)

    def state(self, sigma: float):
        nodes = self.sigmas
        j = next((i for i in range(len(nodes) - 1) if nodes[i + 1] < sigma), len(nodes) - 2)  # nodes[j] ≥ σ
        if nodes[j] == sigma:
            return self.states[j]
        first = min(max(j - 1, 0), len(nodes) - 4)
        points = range(first, first + 4)
        weights = [math.prod((sigma - nodes[k]) / (nodes[m] - nodes[k]) for k in points if k != m) for m in points]
        if is_half(self.states[0]):
            return half_combination(None, 1.0, [(w, self.states[m]) for w, m in zip(weights, points)])
        total = None
        for weight, m in zip(weights, points):
            total = self.states[m] * weight if total is None else torch.add(total, self.states[m], alpha=weight)
        return total

    def targets(self, grid) -> list:
        """States at ``grid[1:]`` (the last one, σ = 0, is the endpoint)."""
        return [self.state(s) for s in grid[1:-1]] + [self.states[-1]]


def dense_reference(model, x, sigma_max, sigma_min=None, extra_args=None, rtol=1e-5,
                    data_end_sigma=None, points=256) -> tuple[DenseReference, object]:
    """``(reference, stats)``: one tight reference solve (:func:`~..reference.reference_trajectory`; its
    :class:`~..adaptive.AdaptiveStats`) from ``x`` at ``sigma_max`` with its states at ``points`` σ nodes:
    log-uniform down to ``sigma_min`` for VE/EPS models (then the denoised end), log-uniform down to σ_max/1000
    merged with uniform-in-σ down to 0 for flow models (``sigma_min=None``)."""
    sigma_max = float(sigma_max)
    if sigma_min is not None:
        ratio = float(sigma_min) / sigma_max
        nodes = [sigma_max * ratio ** (i / (points - 1)) for i in range(points)] + [0.0]
    else:
        half = max(points // 2, 4)
        logarithmic = [sigma_max * 1e-3 ** (i / (half - 1)) for i in range(half)]
        linear = [sigma_max * (1 - i / (half - 1)) for i in range(half)]
        nodes = sorted(set(logarithmic + linear), reverse=True)
    states, stats = reference_trajectory(model, x, torch.tensor(nodes, dtype=torch.float64), extra_args, rtol=rtol,
                                         sigma_min=sigma_min, data_end_sigma=data_end_sigma)
    return DenseReference(nodes, [x] + states), stats


FIRST_CALL_STARTS = (1.0, 0.95, 0.9, 0.8)  # r of the first calls (r·x_0, r·σ_0) :func:`optimize_fitted` tries


def optimize_fitted(model, x, base_sigmas, reference: DenseReference, extra_args=None, prediction="data", order=2,
                    history=3, data_end_sigma=None, knots=6, max_evaluations=60, guidance=None,
                    guidance_history=2, first_calls=((1.0, 1.0),), min_ridge=0.0) -> tuple[ScheduleSearch, SolverFit]:
    """Schedule and coefficients together: :func:`~..schedule_optimization.optimize_schedule` over monotone warps
    of ``base_sigmas`` whose objective is the pilot endpoint error of the solver *fitted on each candidate
    grid* (:func:`~.fit.fit_solver`, targets from ``reference``; N model calls per fit). ``first_calls``: the
    first-call ``(a, t)`` (:func:`~.solver._evaluate`) each candidate grid is fitted with, one fit each, scored by
    the best (those with ``t·σ_0`` not above σ_1 are left out; ``(1, 1)`` always counts). Returns ``(search,
    fit)``: the warp search (its ``sigmas`` the best grid) and the solver fitted on the best grid with its best
    first call, compared to its base update. ``min_ridge``: the fits' least ridge (:func:`~.fit.fit_solver`)."""
    def fit(grid, first_call, compare_base=False):
        return fit_solver(model, x, grid, reference.targets(grid.tolist()), extra_args, prediction, order, history,
                          data_end_sigma, disable=True, compare_base=compare_base, guidance=guidance,
                          guidance_history=guidance_history, first_call=first_call, min_ridge=min_ridge)

    def usable(grid):
        return [(1.0, 1.0)] + [tuple(call) for call in first_calls
                               if tuple(call) != (1.0, 1.0) and first_call_fits(grid, call)]

    def best_first_call(grid):
        errors = {call: fit(grid, call).error for call in usable(grid)}
        finite = {call: error for call, error in errors.items() if math.isfinite(error)}
        return min(finite, key=finite.get) if finite else (1.0, 1.0), min(finite.values(), default=math.inf)

    search = optimize_schedule(lambda grid: best_first_call(grid)[1], base_sigmas, knots=knots,
                               max_evaluations=max_evaluations)
    calls = usable(search.sigmas)
    return search, fit(search.sigmas, calls[0] if len(calls) == 1 else best_first_call(search.sigmas)[0],
                       compare_base=True)
