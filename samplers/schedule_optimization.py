"""Pilot-optimized σ schedules: fit the step placement of a given sampler to a given model.

The idea of LD3 (Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs", arXiv:2405.15506) and
of Bespoke Solvers' time reparametrization (Shaul et al. 2023, arXiv:2310.19075), made gradient-free: the
σ grid of a fixed step count is a monotone warp of a base schedule, and the warp minimizes the endpoint
error of *the sampler that will be used* against a tight reference solve from pilot noise.

- :func:`warp_schedule` — the parametrization. The base grid ``b_0 > … > b_{N−1} > b_N = 0`` is read as a
  function of a fractional index (log-linear between positive points, linear in σ on the last interval);
  a piecewise-linear increasing map ``w: [0, 1] → [0, 1]`` with ``K`` pieces of slopes ``∝ e^{θ_k}`` moves the
  N − 1 interior points; ``θ = 0`` returns the base exactly and σ_0 and the final 0 never move.
- :func:`nelder_mead` — the derivative-free simplex method (Nelder & Mead 1965) on ``log error(θ)``.
- :func:`optimize_schedule` — both together, keeping the best grid seen (never worse than the base), returned
  with the search's numbers as a :class:`ScheduleSearch`.

The reference endpoint the error is measured against is :func:`~.reference.reference_solve`.

The optimized grid is as good as the pilot is representative: use pilot noise of the same shape and
conditioning as the real run (a different seed generalizes; the benchmark checks exactly that).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import validate_sigmas


def warp_schedule(base_sigmas, theta) -> torch.Tensor:
    """The base grid warped by log-slopes ``theta`` (see the module docstring); float64, same length. A base with
    equal consecutive σ is read the same way (flat between the equal points); the warped grid is then
    non-increasing, and the samplers skip what repeats."""
    grid = validate_sigmas(base_sigmas, "warp_schedule")
    if grid[-1] != 0:
        raise ValueError(f"warp_schedule: the base schedule must end in 0, got {grid[-1]}")
    steps = len(grid) - 1
    slopes = [math.exp(min(max(float(t), -30.0), 30.0)) for t in theta]
    if not slopes:
        raise ValueError("warp_schedule: theta needs at least one entry")
    knots = [0.0]
    for slope in slopes:
        knots.append(knots[-1] + slope)
    knots = [k / knots[-1] for k in knots]
    pieces = len(slopes)
    sigmas = [grid[0]]
    for i in range(1, steps):
        u = i / steps * pieces
        k = min(int(u), pieces - 1)
        position = (knots[k] + (u - k) * (knots[k + 1] - knots[k])) * steps
        j = min(int(position), steps - 1)
        fraction = position - j
        if grid[j + 1] > 0:
            sigmas.append(math.exp(math.log(grid[j]) + fraction * (math.log(grid[j + 1]) - math.log(grid[j]))))
        else:
            sigmas.append(grid[j] * (1.0 - fraction))
    sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float64)


def nelder_mead(objective, start, step=0.5, max_evaluations=150, tolerance=1e-4):
    """Minimize ``objective`` (list → float) from ``start`` with the Nelder–Mead simplex (reflection 1,
    expansion 2, contraction ½, shrink ½). Returns ``(best_point, best_value, evaluations)``."""
    n = len(start)
    points = [list(start)] + [[start[j] + (step if j == i else 0.0) for j in range(n)] for i in range(n)]
    values = [objective(p) for p in points]
    evaluations = n + 1
    while evaluations < max_evaluations:
        order = sorted(range(n + 1), key=lambda i: values[i])
        points, values = [points[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tolerance:
            break
        centroid = [sum(p[j] for p in points[:-1]) / n for j in range(n)]
        worst = points[-1]
        reflected = [2 * centroid[j] - worst[j] for j in range(n)]
        reflected_value = objective(reflected)
        evaluations += 1
        if reflected_value < values[0]:
            expanded = [3 * centroid[j] - 2 * worst[j] for j in range(n)]
            expanded_value = objective(expanded)
            evaluations += 1
            if expanded_value < reflected_value:
                points[-1], values[-1] = expanded, expanded_value
            else:
                points[-1], values[-1] = reflected, reflected_value
        elif reflected_value < values[-2]:
            points[-1], values[-1] = reflected, reflected_value
        else:
            contracted = [(centroid[j] + worst[j]) / 2 for j in range(n)]
            contracted_value = objective(contracted)
            evaluations += 1
            if contracted_value < values[-1]:
                points[-1], values[-1] = contracted, contracted_value
            else:
                for i in range(1, n + 1):
                    points[i] = [(points[0][j] + points[i][j]) / 2 for j in range(n)]
                    values[i] = objective(points[i])
                    evaluations += 1
    best = min(range(n + 1), key=lambda i: values[i])
    return points[best], values[best], evaluations


@dataclass(frozen=True)
class ScheduleSearch:
    """The result of :func:`optimize_schedule`: the best grid seen (float64), the error of the base grid and of the
    best one, the objective evaluations made and the warp's log-slopes ``theta`` of the best grid."""
    sigmas: torch.Tensor
    base_error: float
    error: float
    evaluations: int
    theta: list


def optimize_schedule(error_of, base_sigmas, knots=6, max_evaluations=150) -> ScheduleSearch:
    """Warp ``base_sigmas`` to minimize ``error_of(sigmas) → float`` (endpoint error of a pilot run) by Nelder–Mead
    on the log error over the warp's log-slopes (:func:`warp_schedule`, :func:`nelder_mead`).

    ``knots`` warp pieces (at most the number of steps), ``max_evaluations`` pilot runs. Non-finite errors
    count as infinitely bad.
    """
    grid = validate_sigmas(base_sigmas, "optimize_schedule")
    if knots < 1:
        raise ValueError(f"optimize_schedule: knots = {knots} must be ≥ 1")
    if max_evaluations < 1:
        raise ValueError(f"optimize_schedule: max_evaluations = {max_evaluations} must be ≥ 1")
    knots = min(knots, len(grid) - 1)
    best = {"value": math.inf, "theta": [0.0] * knots}

    def objective(theta):
        error = float(error_of(warp_schedule(grid, theta)))
        value = math.log(error) if math.isfinite(error) and error > 0 else (-math.inf if error == 0 else math.inf)
        if value < best["value"]:
            best.update(value=value, theta=list(theta))
        return value

    base_value = objective([0.0] * knots)
    evaluations = 1
    if len(grid) > 2 and max_evaluations > 1 and math.isfinite(base_value):
        _, _, evaluations = nelder_mead(objective, [0.0] * knots, max_evaluations=max_evaluations)
    return ScheduleSearch(sigmas=warp_schedule(grid, best["theta"]),
                          base_error=math.exp(base_value) if math.isfinite(base_value) else math.inf,
                          error=math.exp(best["value"]) if math.isfinite(best["value"]) else math.inf,
                          evaluations=evaluations, theta=best["theta"])

