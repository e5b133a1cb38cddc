"""Adaptive sampling with embedded Runge–Kutta pairs and a PI controller.

Bogacki–Shampine 3(2) (``bosh3``, 1989) and Dormand–Prince 5(4) (``dopri5``, 1980), both FSAL, propagate the
higher-order solution (local extrapolation) and estimate the error with the embedded one. The step size is
chosen by a :class:`~.step_control.PIController`; the stepper (:func:`~.runge_kutta.rk_step`) never chooses it.

The σ grid. Integration runs from ``sigmas[0]`` to ``sigmas[-1]``; the grid is
(1) the initial step-size hint (``|σ_1 − σ_0|`` unless ``initial_step`` is given), and
(2) the output points: the callback fires exactly once for each ``i < len(sigmas) − 1`` when the solution
passes ``sigmas[i]``, with x there from the pair's dense output (DOPRI5's 4th-order continuous extension,
cubic Hermite for BOSH3; exact when a step ends on the grid point) and ``denoised`` linearly interpolated.
Steps are not forced onto the grid, so a fine grid does not cost evaluations.

Error norm: ``RMS(err / (atol + rtol·max(|x|, |x_new|)))`` over all elements (``error_norm="batch"``) or the
maximum over the batch of the per-sample RMS (``"per_sample"``); one host sync per step for the controller.

Never hangs. Before every attempt the sampler checks that, even if the attempt is rejected, the
evaluations left (``max_nfe``, or ``nfe_budget`` when smaller) still pay for finishing with fixed steps of
the same pair on the remaining grid points. When they would not, or when the proposed step falls below
``min_step`` (an unreachable tolerance), it finishes with fixed steps on the remaining grid, warns
(``warnings.warn``, max_nfe/min_step) and reports the ``fallback`` in its :class:`AdaptiveStats`. Total NFE ≤ max(limit, cost of a
fixed solve on the given grid), and ≤ the limit whenever the limit covers at least one step: when even the
fixed finish does not fit, the remaining grid is thinned (linear in grid index) to the affordable number of
steps.

NFE budget mode (``nfe_budget``): adaptive with the given tolerance while the budget allows (keeping the
reserve above), then the rest of the budget on a reject-free fixed-step finish; total NFE ≤ nfe_budget
always (a budget below one step's evaluations raises ``ValueError``). No tolerance search is done: a
search would re-run the model.

σ = 0 end: see :mod:`.common` (``data_end_sigma``; without it — or with a model that returns half-precision
predictions — the last grid interval ending at 0 is the first-order denoised step from the last positive grid σ,
free thanks to FSAL).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .common import (ModelDerivative, Progress, SigmaSteps, check_choice, half_combination, is_half, report,
                     validate_data_end_sigma, validate_latent)
from .runge_kutta import rk_step
from .step_control import PIController
from .tableaux import DOPRI5_DENSE, get_tableau

logger = logging.getLogger(__name__)


def scaled_error(error: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, rtol: float, atol: float,
                 per_sample: bool) -> float:
    """Hairer's scaled RMS error norm as a Python float (the controller's single sync per step); taken in float32
    for half-precision latents."""
    if is_half(x):
        error, x, x_new = error.float(), x.float(), x_new.float()
    scale = torch.maximum(x.abs(), x_new.abs()) * rtol + atol
    squared = (error / scale).reshape(x.shape[0], -1).pow(2)
    norm = squared.mean(1).sqrt().max() if per_sample else squared.mean().sqrt()
    return float(norm)


def _dense_output(sigma, a, b, tableau, evaluations):
    """State and denoised at ``sigma`` inside an accepted step from ``a`` to ``b`` = (σ, x, Evaluation|None).

    DOPRI5 uses its 4th-order continuous extension; other pairs the cubic Hermite interpolant of the end
    points and their derivatives (3rd order, the natural dense output of Bogacki–Shampine); the denoised
    prediction is interpolated linearly (it feeds previews only).
    """
    sigma_a, x_a, ev_a = a
    sigma_b, x_b, ev_b = b
    if sigma == sigma_b:
        return x_b, None if ev_b is None else ev_b.denoised
    if sigma == sigma_a:
        return x_a, ev_a.denoised
    h = sigma_b - sigma_a
    t = (sigma - sigma_a) / h
    if ev_b is None:
        return x_a * (1 - t) + x_b * t, ev_a.denoised
    denoised = ev_a.denoised * (1 - t) + ev_b.denoised * t
    if tableau.name == "dopri5" and evaluations is not None and len(evaluations) == 7:
        difference = x_b - x_a
        slope_a = ev_a.derivative * h - difference
        curvature = difference - ev_b.derivative * h - slope_a
        correction = None
        for weight, evaluation in zip(DOPRI5_DENSE, evaluations):
            if weight != 0.0:
                term = evaluation.derivative * (weight * h)
                correction = term if correction is None else correction + term
        x = x_a + (difference + (slope_a + (curvature + correction * (1 - t)) * t) * (1 - t)) * t
        return x, denoised
    h00, h10 = 2 * t ** 3 - 3 * t ** 2 + 1, t ** 3 - 2 * t ** 2 + t
    h01, h11 = -2 * t ** 3 + 3 * t ** 2, t ** 3 - t ** 2
    x = x_a * h00 + ev_a.derivative * (h10 * h) + x_b * h01 + ev_b.derivative * (h11 * h)
    return x, denoised


def _thin(points: list, steps: int) -> list:
    """``steps`` intervals through ``points`` (descending), linear in the index, keeping both ends."""
    n = len(points) - 1
    if steps >= n:
        return points
    out = []
    for k in range(steps + 1):
        u = k * n / steps
        j = min(int(u), n - 1)
        out.append(points[j] + (points[j + 1] - points[j]) * (u - j))
    out[-1] = points[-1]
    return out


@dataclass(frozen=True)
class AdaptiveStats:
    """What an adaptive solve did: model calls (``nfe``), accepted and rejected steps, the ``fallback`` that ended
    the adaptive part (None, "max_nfe", "nfe_budget" or "min_step") and the fixed steps of the finish after it."""
    nfe: int
    accepted: int
    rejected: int
    fallback: Optional[str]
    fixed_steps: int
    method: str
    rtol: float
    atol: float


def sample_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, method="dopri5",
                    rtol=1e-3, atol=1e-4, error_norm="batch", max_nfe=1000, nfe_budget=None, min_step=None,
                    initial_step=None, data_end_sigma=None, controller: Optional[PIController] = None):
    """The k-diffusion-signature sampler of :func:`solve_adaptive`: the same options, the final state only."""
    return solve_adaptive(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                          method=method, rtol=rtol, atol=atol, error_norm=error_norm, max_nfe=max_nfe,
                          nfe_budget=nfe_budget, min_step=min_step, initial_step=initial_step,
                          data_end_sigma=data_end_sigma, controller=controller)[0]


def solve_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, method="dopri5",
                   rtol=1e-3, atol=1e-4, error_norm="batch", max_nfe=1000, nfe_budget=None, min_step=None,
                   initial_step=None, data_end_sigma=None, controller: Optional[PIController] = None):
    """Adaptive embedded-pair solve, returning ``(x, AdaptiveStats)`` (Bogacki & Shampine 1989; Dormand & Prince 1980; PI control after
    Gustafsson 1991). See the module docstring for the grid, the norm, the caps and the budget mode.

    Options: ``method`` ("dopri5" | "bosh3"), ``rtol``, ``atol``, ``error_norm`` ("batch" | "per_sample"),
    ``max_nfe``, ``nfe_budget``, ``min_step`` (absolute σ; default 1e-6·|σ_0 − σ_end|), ``initial_step``,
    ``data_end_sigma``,
    ``controller`` (a :class:`PIController`; default for the pair's error order).
    """
    who = f"fs_{method}" if isinstance(method, str) else "sample_adaptive"
    tableau = get_tableau(method, who)
    if not tableau.is_embedded:
        raise ValueError(f"{who}: method = {method!r} has no embedded error estimate; use 'dopri5' or 'bosh3'")
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    check_choice(error_norm, ("batch", "per_sample"), who, "error_norm")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{who}: {name} = {value} must be a finite number ≥ 0")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{who}: rtol and atol cannot both be 0")
    step_cost = tableau.evaluations_per_step()
    limit = int(max_nfe) if nfe_budget is None else min(int(max_nfe), int(nfe_budget))
    if limit < 1 + step_cost:
        name = "nfe_budget" if nfe_budget is not None and int(nfe_budget) <= int(max_nfe) else "max_nfe"
        raise ValueError(f"{who}: {name} = {limit} is below the {1 + step_cost} model evaluations one "
                         f"{tableau.name} step needs")
    if steps.steps == 0:  # every σ equal: nothing to integrate
        return steps.finish(x), AdaptiveStats(nfe=0, accepted=0, rejected=0, fallback=None, fixed_steps=0,
                                              method=tableau.name, rtol=rtol, atol=atol)
    span = grid[0] - grid[-1]
    min_step = 1e-6 * span if min_step is None else float(min_step)
    if not (math.isfinite(min_step) and min_step > 0):
        raise ValueError(f"{who}: min_step = {min_step} must be a positive σ")
    if initial_step is not None and not (math.isfinite(initial_step) and initial_step > 0):
        raise ValueError(f"{who}: initial_step = {initial_step} must be a positive σ")
    controller = PIController(tableau.error_order) if controller is None else controller
    controller.reset()
    per_sample = error_norm == "per_sample"

    derivative = ModelDerivative(model, x, sigmas, extra_args, data_end_sigma)
    sigma = grid[0]
    first = derivative(x, sigma)  # before the σ = 0 end is chosen: a half-precision D rules out data_end_sigma
    n_steps = len(grid) - 1
    final_denoise = grid[-1] == 0 and derivative.data_end_sigma is None
    end = grid[-2] if final_denoise else grid[-1]
    final_cost = 0 if (tableau.fsal or not final_denoise) else 1
    progress = Progress(n_steps, disable=disable)
    next_report = 0

    def emit_until(sigma_b, a, b, evaluations=None):
        nonlocal next_report
        while next_report < n_steps and grid[next_report] >= sigma_b:
            if callback is not None:
                x_i, denoised_i = _dense_output(grid[next_report], a, b, tableau, evaluations)
                report(callback, x_i, next_report, sigmas[next_report], denoised_i)
            progress.update()
            next_report += 1

    def reserve(sigma):  # evaluations of a fixed finish from sigma on the remaining grid points
        return sum(1 for g in grid if end <= g < sigma) * step_cost + final_cost

    emit_until(sigma, (sigma, x, first), (sigma, x, first))
    h = -(grid[0] - grid[1] if initial_step is None else float(initial_step))
    accepted = rejected = 0
    fallback = None
    while sigma > end:
        if -h < min_step and sigma - end > min_step:
            fallback = "min_step"
            break
        if derivative.nfe + step_cost + reserve(sigma) > limit:
            fallback = "nfe_budget" if nfe_budget is not None and int(nfe_budget) <= int(max_nfe) else "max_nfe"
            break
        sigma_new = sigma + h
        if sigma_new - end <= 1e-9 * span:
            sigma_new = end
        result = rk_step(derivative, x, sigma, sigma_new, tableau, first_derivative=first)
        error = scaled_error(result.error, x, result.x, rtol, atol, per_sample)
        ok = controller.accepts(error)
        factor = controller.factor(error, ok)
        if ok:
            accepted += 1
            emit_until(sigma_new, (sigma, x, result.evaluations[0]), (sigma_new, result.x, result.last),
                       result.evaluations)
            h = (sigma_new - sigma) * factor
            x, sigma, first = result.x, sigma_new, result.last
        else:
            rejected += 1
            h = (sigma_new - sigma) * factor
        del result  # drop this attempt's stage evaluations before the next attempt's model calls (peak memory)

    fixed_steps = 0
    if fallback is not None:
        remaining = [sigma] + [g for g in grid if end <= g < sigma]
        affordable = max(1, (limit - derivative.nfe - final_cost) // step_cost)
        planned = _thin(remaining, affordable)
        if fallback == "min_step":
            cause = f"the step size fell below min_step = {min_step:.3g}"
        else:
            cause = f"{fallback} = {limit} would be exceeded"
        thinned = " (thinned to fit)" if len(planned) < len(remaining) else ""
        message = (f"{who}: {cause} at σ = {sigma:.4g} after {accepted} accepted / {rejected} rejected steps "
                   f"({derivative.nfe} NFE); finishing with {len(planned) - 1} fixed {tableau.name} steps on "
                   f"the remaining grid{thinned}. ")
        if fallback == "min_step":
            message += f"rtol = {rtol:g}, atol = {atol:g} is not reachable here; loosen it."
        elif fallback == "max_nfe":
            message += "Increase max_nfe or loosen rtol/atol."
        if fallback == "nfe_budget":
            logger.info(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        for j in range(len(planned) - 1):
            sigma_new = planned[j + 1]
            result = rk_step(derivative, x, planned[j], sigma_new, tableau, first_derivative=first)
            emit_until(sigma_new, (planned[j], x, result.evaluations[0]), (sigma_new, result.x, result.last),
                       result.evaluations)
            x, sigma, first = result.x, sigma_new, result.last
            fixed_steps += 1
            del result

    if final_denoise:
        if first is None:
            first = derivative(x, sigma)
        emit_until(sigma, (sigma, x, first), (sigma, x, first))  # already emitted unless non-FSAL
        if is_half(x):
            x = half_combination(x, 1.0, [(0.0 - sigma, first.derivative)])
        else:
            x = x + first.derivative * (0.0 - sigma)  # = D(x, σ): the first-order data-end step
    progress.close()
    summary = AdaptiveStats(nfe=derivative.nfe, accepted=accepted, rejected=rejected, fallback=fallback,
                            fixed_steps=fixed_steps, method=tableau.name, rtol=rtol, atol=atol)
    logger.info("%s: %d NFE, %d accepted, %d rejected, fallback=%s, %d fixed steps", who, summary.nfe,
                accepted, rejected, fallback, fixed_steps)
    return steps.finish(x), summary


def _named(method):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, rtol=1e-3, atol=1e-4,
                error_norm="batch", max_nfe=1000, nfe_budget=None, min_step=None, initial_step=None,
                data_end_sigma=None):
        return sample_adaptive(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                               method=method, rtol=rtol, atol=atol, error_norm=error_norm, max_nfe=max_nfe,
                               nfe_budget=nfe_budget, min_step=min_step, initial_step=initial_step,
                               data_end_sigma=data_end_sigma)

    sampler.__name__ = sampler.__qualname__ = f"sample_fs_{method}"
    sampler.__doc__ = f"Adaptive {method} with PI step control; see :func:`sample_adaptive`."
    return sampler


sample_fs_bosh3 = _named("bosh3")
sample_fs_dopri5 = _named("dopri5")
