"""Variable-step Adams–Bashforth 2–4 on the σ grid (Hairer, Nørsett & Wanner I, §III.5).

``x_{n+1} = x_n + Σ_j β_j d_{n−j}`` with ``β_j = ∫_{σ_n}^{σ_{n+1}} ℓ_j(s) ds``, ``ℓ_j`` the Lagrange basis on the
last k grid points ``σ_n, σ_{n−1}, …``; the weights are exact polynomial integrals in float64, so the method
has order k on any grid. One model evaluation per step after a warm start of k − 1 Runge–Kutta steps of
order ≥ k (Heun for AB2, RK4 for AB3/AB4), which keeps the measured order nominal.

Multistep = momentum: AB2 on a uniform grid is ``x + h[(3/2)d_n − (1/2)d_{n−1}]``, i.e. a gradient step plus
half the change of the gradient — heavy-ball-type momentum with β = 1/2 (see :mod:`.optimizers`).
The update never evaluates the model at σ_{n+1}. A step to σ = 0 without ``data_end_sigma`` (VE/EPS models,
which are not defined below σ_min) is the "take the denoised" Euler step, as in k-diffusion: extrapolating the
velocity polynomial over the last, typically much longer, step to 0 amplifies the model's roughness.
Equal consecutive σ are skipped (:class:`~.common.SigmaSteps`): a zero step never enters the history (the
Lagrange weights would divide by it). Half-precision latents: the update is accumulated in float32 and rounded
once (:func:`~.common.half_combination`).
"""
from __future__ import annotations

from .common import (Evaluation, ModelDerivative, SigmaSteps, half_combination, is_half, progress_range, report,
                     validate_data_end_sigma, validate_latent)
from .runge_kutta import end_tableau, rk_step
from .tableaux import EULER, HEUN, RK4

WARM_STARTS = ("lower_order", "runge_kutta")  # the multistep samplers' starts (here and the PEC core)


def _lagrange_basis(nodes):
    """Coefficient lists (ascending powers of u) of the Lagrange basis polynomials on ``nodes``."""
    basis = []
    for j, tj in enumerate(nodes):
        poly = [1.0]
        for m, tm in enumerate(nodes):
            if m == j:
                continue
            scale = 1.0 / (tj - tm)
            shifted = [0.0] * (len(poly) + 1)
            for p, c in enumerate(poly):  # poly · (u − tm)/(tj − tm)
                shifted[p] -= c * tm * scale
                shifted[p + 1] += c * scale
            poly = shifted
        basis.append(poly)
    return basis


def polynomial_moments(h: float, count: int) -> list[float]:
    """``∫_0^h u^p du`` for p < count (σ-time weights; h may be negative)."""
    return [h ** (p + 1) / (p + 1) for p in range(count)]


def interpolation_weights(nodes, moments) -> list[float]:
    """``w_m = Σ_p coef_{m,p} · moment_p``: the integral of each Lagrange basis polynomial on ``nodes``
    against the kernel whose moments ``∫ K(u) u^p du`` are given (float64)."""
    return [sum(c * moments[p] for p, c in enumerate(poly)) for poly in _lagrange_basis(nodes)]


def adams_bashforth_weights(past_sigmas, sigma_next) -> list[float]:
    """Weights ``β_j`` (already multiplied by the step) for derivatives at ``past_sigmas = [σ_n, σ_{n−1}, …]``.

    Integrates the Lagrange basis polynomials over ``[σ_n, σ_{n+1}]`` in local coordinates ``t = s − σ_n``
    (float64). On a uniform grid with step h this gives h·(3/2, −1/2), h·(23, −16, 5)/12 and
    h·(55, −59, 37, −9)/24.
    """
    base = past_sigmas[0]
    nodes = [s - base for s in past_sigmas]
    return interpolation_weights(nodes, polynomial_moments(sigma_next - base, len(nodes)))


def _adams_update(x, weights, history):
    """``x + Σ_j β_j d_{n−j}`` (``history`` newest first). A function of its own, so that its temporaries are
    released before the next model call."""
    if is_half(x):
        return half_combination(x, 1.0, zip(weights, history))
    increment = None
    for weight, d in zip(weights, history):
        term = d * weight
        increment = term if increment is None else increment + term
    return x + increment


def sample_adams_bashforth(model, x, sigmas, extra_args=None, callback=None, disable=None, order=2,
                           data_end_sigma=None, warm_start="runge_kutta"):
    """Variable-step Adams–Bashforth of ``order`` 2, 3 or 4 (Bashforth & Adams 1883; Hairer et al. I §III.5).

    ``warm_start="runge_kutta"``: the first ``order − 1`` steps are RK steps (Heun for AB2, RK4 for AB3/AB4),
    so the measured order is the nominal one; they cost 2 or 4 NFE each. ``warm_start="lower_order"``: the
    first steps are Euler, AB2, … (the bootstrap of PNDM/DPM-Solver-style multistep samplers), 1 NFE per step
    from the start — the global order drops by one (the first step's local error is O(h²)), but at small NFE
    budgets the saved evaluations buy more steps. ``data_end_sigma`` only matters for an RK warm-start step
    that ends at σ = 0.
    """
    who = f"fs_ab{order}"
    if order not in (2, 3, 4):
        raise ValueError(f"sample_adams_bashforth: order = {order!r} must be 2, 3 or 4")
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    if warm_start not in WARM_STARTS:
        raise ValueError(f"{who}: warm_start = {warm_start!r} must be 'runge_kutta' or 'lower_order'")
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    derivative = ModelDerivative(model, x, sigmas, extra_args, data_end_sigma)
    warm_tableau = HEUN if order == 2 else RK4
    history = []  # derivatives d_n, d_{n-1}, … (newest first)
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        del history[order - 1:]  # the update needs the new derivative and order − 1 past ones (peak memory)
        evaluation = derivative(x, sigma)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        evaluation = Evaluation(evaluation.derivative, None)  # D is reported; the updates need only d
        history.insert(0, evaluation.derivative)
        steps_back = min(order, i + 1) if warm_start == "lower_order" else order
        # the denoised end of VE/EPS models; the Adams step itself never evaluates at σ = 0
        denoise_end = sigma_next == 0 and derivative.requested_data_end_sigma is None
        if denoise_end or i < steps_back - 1 or (warm_start == "runge_kutta" and i < order - 1):
            if denoise_end:
                stepper = EULER
            else:  # a warm-start step that ends at σ = 0: its stage there needs data_end_sigma
                stepper = end_tableau(derivative, warm_tableau) if sigma_next == 0 else warm_tableau
            x = rk_step(derivative, x, sigma, sigma_next, stepper, first_derivative=evaluation).x
        else:
            x = _adams_update(x, adams_bashforth_weights(grid[i - steps_back + 1:i + 1][::-1], sigma_next), history)
        del evaluation
    return steps.finish(x)


def _named(order):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, data_end_sigma=None,
                warm_start="runge_kutta"):
        return sample_adams_bashforth(model, x, sigmas, extra_args=extra_args, callback=callback,
                                      disable=disable, order=order, data_end_sigma=data_end_sigma,
                                      warm_start=warm_start)

    sampler.__name__ = sampler.__qualname__ = f"sample_fs_ab{order}"
    sampler.__doc__ = f"Variable-step Adams–Bashforth {order} (1 NFE/step), see :func:`sample_adams_bashforth`."
    return sampler


sample_fs_ab2 = _named(2)
sample_fs_ab3 = _named(3)
sample_fs_ab4 = _named(4)
