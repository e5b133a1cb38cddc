"""The reference solve: the probability-flow ODE integrated tightly from pilot noise, the "exact" answer that the
Optimized Schedule, the Fitted Solver and the quality benchmark measure samplers against.

One configuration for all of them (:func:`reference_options`): Dormand–Prince 5(4) (Dormand & Prince 1980) with
per-sample error control at a relative tolerance ``rtol``, ``atol = rtol/10``, and at most
:data:`REFERENCE_MAX_NFE` model calls. The grid (:func:`reference_sigmas`) runs from the start σ to σ = 0 as every
sampler ends: a flow model is integrated down to 0 (``data_end_sigma``, see :mod:`.common`); a VE/EPS model, which
is not defined below its σ_min, down to ``sigma_min`` and then takes the denoised step to 0 (``sigma_min`` is the
model's smallest σ for VE/EPS models, None for flow models).
"""
from __future__ import annotations

import torch

from .adaptive import AdaptiveStats, solve_adaptive
from .common import validate_sigmas

REFERENCE_MAX_NFE = 100000  # model calls a reference solve may make before it finishes with fixed steps


def reference_options(rtol: float) -> dict:
    """Options of :func:`~.adaptive.solve_adaptive` (and the fs_dopri5 sampler) for a reference solve."""
    return dict(method="dopri5", rtol=rtol, atol=rtol / 10, error_norm="per_sample", max_nfe=REFERENCE_MAX_NFE)


def reference_sigmas(sigma_start, sigma_min=None) -> torch.Tensor:
    """The grid of a reference solve (float64): ``[σ_start, σ_min, 0]`` for VE/EPS models, whose schedules end
    ``σ_min → 0``, else ``[σ_start, 0]`` (flow models: ``sigma_min=None``; also when σ_min ≥ σ_start)."""
    keep_min = sigma_min is not None and float(sigma_min) < float(sigma_start)
    end = [float(sigma_min), 0.0] if keep_min else [0.0]
    return torch.tensor([float(sigma_start), *end], dtype=torch.float64)


def reference_solve(model, x, sigma_max, sigma_min=None, extra_args=None, rtol=1e-5,
                    data_end_sigma=None) -> tuple[torch.Tensor, AdaptiveStats]:
    """``(endpoint, stats)``: the probability-flow endpoint from ``x`` at ``sigma_max`` (:func:`reference_options`
    on :func:`reference_sigmas`)."""
    return solve_adaptive(model, x, reference_sigmas(sigma_max, sigma_min), extra_args=extra_args, disable=True,
                          data_end_sigma=data_end_sigma, **reference_options(rtol))


def pilot_reference(model, x, sigma_max, sigma_min=None, extra_args=None, rtol=1e-5,
                    data_end_sigma=None) -> torch.Tensor:
    """The endpoint of :func:`reference_solve` alone."""
    return reference_solve(model, x, sigma_max, sigma_min, extra_args, rtol, data_end_sigma)[0]


def reference_trajectory(model, x, sigmas, extra_args=None, rtol=1e-5, sigma_min=None,
                         data_end_sigma=None) -> tuple[list, AdaptiveStats]:
    """``(states, stats)``: the reference states at ``sigmas[1:]`` from ``x`` at ``sigmas[0]`` (the grid must end
    in 0), from the solve's dense output at the grid points (DOPRI5's continuous extension, Hairer, Nørsett &
    Wanner I, §II.6). Without ``data_end_sigma`` (VE/EPS models) the solve continues below the grid's last
    positive σ down to ``sigma_min`` before the final denoised step, as :func:`reference_solve` does."""
    grid = validate_sigmas(sigmas, "reference_trajectory")
    if grid[-1] != 0:
        raise ValueError(f"reference_trajectory: the grid must end in 0, got {grid[-1]}")
    solve_grid = list(grid)
    if data_end_sigma is None and sigma_min is not None and 0 < float(sigma_min) < grid[-2]:
        solve_grid.insert(-1, float(sigma_min))
    states = {}

    def keep(payload):
        states[payload["i"]] = payload["x"].clone()

    end, stats = solve_adaptive(model, x, torch.tensor(solve_grid, dtype=torch.float64), extra_args=extra_args,
                                callback=keep, disable=True, data_end_sigma=data_end_sigma,
                                **reference_options(rtol))
    return [states[i] for i in range(1, len(grid) - 1)] + [end], stats
