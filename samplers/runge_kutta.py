"""Fixed-step explicit Runge–Kutta sampling from Butcher tableaux (Butcher 2016).

One generic step :func:`rk_step` runs any :class:`~.tableaux.ButcherTableau`; :func:`sample_rk` walks
the σ grid with it. Each named sampler (``fs_euler`` … ``fs_rk38``) is the tableau's name.

σ = 0 end: with ``data_end_sigma`` (flow models) a stage at σ = 0 is evaluated at σ = data_end_sigma,
so Heun/RK4 keep their order on the last step (ComfyUI's Heun falls back to Euler there). With
``data_end_sigma=None`` (VE/EPS models) a step ending at σ = 0 is the Euler step ``x ← D(x, σ_i)``,
first order on that last step, as in k-diffusion; so is it for a flow model whose predictions are half precision
(they cannot resolve ``(x − D)/data_end_sigma``, see :class:`~.common.ModelDerivative`), unless no stage of the
tableau lands on σ = 0 (:func:`end_tableau`).

``fs_euler`` is bit-identical to k-diffusion's ``sample_euler`` (``s_churn = 0``) on float32/float64 latents: the
derivative divides by the σ-grid-dtype σ tensor and the update is ``x + d·Δσ`` with ``Δσ`` computed in the σ
grid's dtype. Equal consecutive σ are skipped (:class:`~.common.SigmaSteps`; ComfyUI's euler calls the model there
and leaves x unchanged, so the result is the same without the call). On a half-precision latent the stage sums are
accumulated in float32 and rounded once (:func:`~.common.half_combination`); x keeps its dtype, where ComfyUI's
``sample_euler`` promotes it to float32 after the first step.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .common import (Evaluation, ModelDerivative, SigmaSteps, half_combination, is_half, progress_range, report,
                     validate_data_end_sigma, validate_latent)
from .tableaux import EULER, ButcherTableau, get_tableau


class RKStep(NamedTuple):
    x: torch.Tensor  # the state at sigma_next
    error: Optional[torch.Tensor]  # h Σ b_error_j k_j for embedded pairs, else None
    # Evaluation of every stage, in stage order; only the first (as given or evaluated) and the FSAL last carry
    # their denoised prediction, the other stages' is None: no update needs it (released before the next call)
    evaluations: list
    last: Optional[Evaluation]  # FSAL: the evaluation at (x_next, sigma_next), else None


def _combine(x: Optional[torch.Tensor], terms) -> Optional[torch.Tensor]:
    """``x + Σ coefficient·k`` with zero coefficients skipped (one-term sums keep k-diffusion's bits);
    ``x=None`` returns the sum alone. Half precision: :func:`~.common.half_combination` (one rounding)."""
    terms = list(terms)
    if (x is not None and is_half(x)) or (x is None and terms and is_half(terms[0][1])):
        return half_combination(x, 1.0, terms)
    increment = None
    for coefficient, k in terms:
        if coefficient == 0.0:
            continue
        term = k * coefficient
        increment = term if increment is None else increment + term
    if x is None or increment is None:
        return x if increment is None else increment
    return x + increment


def rk_step(derivative_fn: Callable, x: torch.Tensor, sigma: float, sigma_next: float,
            tableau: ButcherTableau, first_derivative: Optional[Evaluation] = None,
            step: Optional[float] = None) -> RKStep:
    """One explicit RK step of ``dx/dσ = d(x, σ)`` from ``sigma`` to ``sigma_next`` (Butcher 2016, §2.3).

    ``derivative_fn(x, σ) → Evaluation(d, D)`` with σ a Python float. ``first_derivative`` (the
    evaluation at ``(x, sigma)``) saves one evaluation when known (FSAL, multistep warm start).
    ``step`` overrides ``h = sigma_next − sigma`` (the fixed-step sampler passes Δσ rounded in the σ grid's
    dtype, as k-diffusion does). Coefficients ``h·a_jl`` and ``h·b_j`` are float64 Python scalars.
    Returns :class:`RKStep` (state, error estimate or None, the stage evaluations, FSAL evaluation).
    Memory: the update, the stage states and the error estimate are linear combinations of the stage derivatives
    k_j only, so a stage's denoised prediction is dropped as soon as its evaluation returns (the first stage's and
    the FSAL last stage's are kept: they are the evaluations at the step's two ends, which the caller reports);
    during stage j's model call the step holds x, k_1 … k_{j−1} and the stage state.
    """
    h = (sigma_next - sigma) if step is None else step
    evaluations: list[Evaluation] = []
    state = x  # only the last stage's state is needed (FSAL); earlier ones are freed as the step proceeds
    last_stage = tableau.stages - 1
    for j in range(tableau.stages):
        if j == 0:
            state = x
            evaluation = first_derivative if first_derivative is not None else derivative_fn(x, sigma)
        else:
            state = _combine(x, ((h * a, evaluations[l].derivative) for l, a in enumerate(tableau.a[j])))
            c = tableau.c[j]
            stage_sigma = sigma_next if c == 1.0 else sigma + c * h
            evaluation = derivative_fn(state, stage_sigma)
        if j == 0 or (tableau.fsal and j == last_stage):
            evaluations.append(evaluation)
        else:  # the stage's D: no stage state, update or error estimate needs it, so it is not kept
            evaluations.append(Evaluation(evaluation.derivative, None))
        del evaluation  # no reference to this stage's D survives into the next stage's model call
    if tableau.fsal:
        x_next, last = state, evaluations[-1]
    else:
        x_next = _combine(x, ((h * b, e.derivative) for b, e in zip(tableau.b, evaluations)))
        last = None
    error = None
    if tableau.b_error is not None:
        error = _combine(None, ((h * e, ev.derivative) for e, ev in zip(tableau.b_error, evaluations)))
    return RKStep(x_next, error, evaluations, last)


def end_tableau(derivative: ModelDerivative, tableau: ButcherTableau) -> ButcherTableau:
    """The tableau of a step that ends at σ = 0: ``tableau`` when its stages can be evaluated there — with
    ``data_end_sigma``, or, for a flow model whose half-precision predictions rule the substitution out
    (:class:`~.common.ModelDerivative`), when no stage lands on σ = 0 (midpoint, Ralston) — else Euler, the
    denoised step ``x ← D(x, σ)``."""
    if derivative.data_end_sigma is not None:
        return tableau
    if derivative.requested_data_end_sigma is not None and all(c != 1.0 for c in tableau.c[1:]):
        return tableau
    return EULER


def integrate_fixed(derivative: ModelDerivative, x: torch.Tensor, grid: list, tableau: ButcherTableau,
                    first: Optional[Evaluation] = None, steps: Optional[list] = None,
                    on_step: Optional[Callable] = None, disable=None) -> torch.Tensor:
    """Walk ``grid`` (Python floats) with ``tableau``; the σ = 0 rule of the module docstring applies.

    ``on_step(i, x, evaluation_at_x)`` is called before each step (for callbacks); ``steps`` optionally
    gives the Δσ of each interval (see :func:`rk_step`).
    """
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        if first is None:
            first = derivative(x, sigma)
        if on_step is not None:
            on_step(i, x, first)
        first = Evaluation(first.derivative, None)  # D is reported; the RK update needs only d (peak memory)
        stepper = end_tableau(derivative, tableau) if sigma_next == 0 else tableau
        result = rk_step(derivative, x, sigma, sigma_next, stepper, first_derivative=first,
                         step=None if steps is None else steps[i])
        x, first = result.x, result.last
        del result  # drop this step's stage evaluations before the next step's model calls (peak memory)
    return x


def sample_rk(model, x, sigmas, extra_args=None, callback=None, disable=None, method="rk4",
              data_end_sigma=None):
    """Fixed-step explicit Runge–Kutta sampler for any tableau name in ``TABLEAUX`` (Butcher 2016).

    Options: ``method`` (``euler``, ``heun``, ``midpoint``, ``ralston``, ``rk3``, ``rk4``, ``rk38``,
    ``bosh3``, ``dopri5`` — embedded pairs use their higher-order weights here), ``data_end_sigma`` (σ at
    which a stage at σ = 0 is evaluated; None → first-order denoised last step). NFE per step = stages
    (FSAL pairs: stages − 1 after the first step).
    """
    who = f"fs_{method}" if isinstance(method, str) else "sample_rk"
    tableau = get_tableau(method, who)
    grid = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    sigmas, callback = grid.sigmas, grid.callback
    derivative = ModelDerivative(model, x, sigmas, extra_args, data_end_sigma)
    if isinstance(sigmas, torch.Tensor):
        steps = (sigmas[1:] - sigmas[:-1]).tolist()  # Δσ in the grid's dtype, like k-diffusion's dt
    else:
        steps = None

    def on_step(i, state, evaluation):
        report(callback, state, i, sigmas[i], evaluation.denoised)

    x = integrate_fixed(derivative, x, grid.grid, tableau, steps=steps, on_step=on_step, disable=disable)
    return grid.finish(x)


def _named(method: str):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, data_end_sigma=None):
        return sample_rk(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                         method=method, data_end_sigma=data_end_sigma)

    sampler.__name__ = f"sample_fs_{method}"
    sampler.__qualname__ = sampler.__name__
    sampler.__doc__ = (f"Fixed-step {get_tableau(method).name} (order {get_tableau(method).order}, "
                       f"{get_tableau(method).stages} NFE/step) via :func:`sample_rk` (Butcher 2016).")
    return sampler


sample_fs_euler = _named("euler")
sample_fs_heun = _named("heun")
sample_fs_midpoint = _named("midpoint")
sample_fs_ralston = _named("ralston")
sample_fs_rk3 = _named("rk3")
sample_fs_rk4 = _named("rk4")
sample_fs_rk38 = _named("rk38")
