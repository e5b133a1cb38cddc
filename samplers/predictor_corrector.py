"""Multistep predictor–corrector samplers at one model evaluation per step (PEC mode).

All integrate ComfyUI's probability-flow ODE ``dx/dσ = (x − D)/σ`` (the same form for EPS, V and CONST
models) with a k-point interpolating polynomial of past model outputs:

- ``prediction="velocity"`` (``fs_abm``): Adams–Bashforth–Moulton in σ on ``v = (x − D)/σ``
  (Hairer, Nørsett & Wanner I, §III.1 and §III.5 — variable-step weights, PEC mode).
- ``prediction="data"`` (``fs_exp_abm``): the exponential integrator in ``λ = −log σ`` on the data
  prediction D. ``d(x/σ) = D d(1/σ)`` is exact, so ``x_{n+1} = e^{−h} x_n + Σ_m w_m D_m`` with
  ``w_m = ∫_0^h e^{u−h} ℓ_m(u) du`` (``h = λ_{n+1} − λ_n``): DPM-Solver++'s multistep predictor
  (Lu et al. 2022, arXiv:2211.01095) with exact Lagrange weights (as DEIS, Zhang & Chen 2023).
- ``prediction="noise"`` (``fs_noise_abm``): the exponential integrator in ``s = log(σ_n/σ)`` on the velocity
  ``v = (x − D)/σ`` — the noise prediction ε̂ of EPS models. ``dx = v dσ = −σ_n e^{−s} v ds``, so
  ``x_{n+1} = x_n − σ_n Σ_m w_m v_m`` with ``w_m = ∫_0^h e^{−s} ℓ_m(s) ds``: the noise-prediction multistep
  DPM-Solver (Lu et al. 2022, arXiv:2206.00927) with exact Lagrange weights. ε̂ varies on the scale of log σ,
  not σ: on karras-type grids, whose σ steps shrink geometrically, its extrapolation in log σ holds where the
  σ-time polynomial of ``fs_abm`` does not.
- ``prediction="vp"`` (``fs_vp_abm``): the velocity interpolated in the time ``t(σ)`` of the variance-preserving
  SDE with the same marginals (``σ² = exp(β_min t + β_d t²/2) − 1``, the EDM-matched constants ComfyUI's ``deis``
  uses) and integrated in σ, ``w_m = ∫_{σ_n}^{σ_{n+1}} ℓ_m(t(s)) ds`` by 24-point Gauss–Legendre: the
  time-quadratic Adams–Bashforth of DEIS (Zhang & Chen 2023, arXiv:2204.13902, "tAB"), here with the corrector and
  the order-keeping velocity end. ``t ≈ σ·√(2/β_d)`` for σ ≪ 1 and ``∝ √(log σ)`` for σ ≫ 1.

Two step-dependent rules, both decided from the σ grid alone (no extra model calls):

- ``max_amplification`` (variable order): each predictor uses the most points whose update amplifies the
  outputs' deviations from the polynomial by at most this factor (:func:`variable_order`); the long first steps of
  a short schedule get a lower order, the later steps the full one.
- ``corrector_max_log_step``: the corrector acts only on steps with ``log(σ_n/σ_{n+1})`` at most this — on longer
  steps the corrected state moves far from the point the newest output was evaluated at, which the next
  predictor uses (PEC), and the correction costs more than it gains. The first step of a run is the exception: its
  predictor has one point (first order), and its two-point corrector lifts it to second order at any step length,
  which matters where a run starts mid-schedule (the second half of a split KSamplerAdvanced run).

``warm_start="runge_kutta"`` (not the default of any dropdown name): the first steps that the short history
would otherwise bound — steps 0 … order − 3, the ones whose local error is above that of the full order — are
explicit Runge–Kutta steps in σ of the order the full order needs (RK3 or RK4 with the corrector, Heun or RK3
without, :func:`warm_start_tableau`), as the warm start of :func:`~.multistep.sample_adams_bashforth`: the
method keeps its full order from σ_max on at 1–3 extra model calls per such step. The default
``"lower_order"`` spends none, which at ≤ 32 model calls buys more than the order (docs/samplers.md).

PEC: the predictor gives ``x^p_{n+1}``; the one model evaluation at ``(x^p_{n+1}, σ_{n+1})`` is used both to
correct ``x_{n+1}`` with one more interpolation point (the Adams–Moulton / UniC idea, Zhao et al. 2023,
"UniPC", arXiv:2302.04867: the order rises by one at no extra NFE) and as the newest history entry of the
next predictor. The first steps use the history they have (lower order, 1 NFE per step from the start).
The step that ends at σ = 0 (λ = ∞): with ``data_end_sigma`` (flow models) a σ-time Adams–Bashforth step on the
velocity history (no model evaluation at σ = 0 is needed, the order is kept); without it (VE/EPS models, not
defined below σ_min) the "take the denoised" step ``x ← D`` as in k-diffusion, and the step before it skips the
corrector so that D belongs to x (UniPC also drops the corrector at the end). Weights are computed in float64
(Python floats); on a half-precision latent the update is accumulated in float32 and rounded once
(:func:`~.common.half_combination`). Equal consecutive σ are skipped (:class:`~.common.SigmaSteps`): a zero step
never enters the history.
"""
from __future__ import annotations

import math

import torch

from .common import (ModelDerivative, SigmaSteps, check_choice, check_range, half_combination, is_half,
                     progress_range, report, validate_data_end_sigma, validate_latent)
# the Lagrange weights Adams–Bashforth uses, and the starts it offers
from .multistep import WARM_STARTS, interpolation_weights, polynomial_moments
from .runge_kutta import rk_step
from .tableaux import HEUN, RK3, RK4

PREDICTIONS = ("velocity", "data")  # the base updates the Fitted Solver builds on
MULTISTEP_PREDICTIONS = PREDICTIONS + ("noise", "vp")


def exponential_moments(h: float, count: int) -> list[float]:
    """``J_p = ∫_0^h e^{u−h} u^p du`` for p < count, h > 0, float64.

    Recurrence ``J_0 = 1 − e^{−h}``, ``J_p = h^p − p J_{p−1}`` (integration by parts) for h ≥ 1/20 (its
    relative rounding error grows like p!·ε/h^p: ≤ 1e-8 there for p ≤ 4); below, the series
    ``J_p = e^{−h} Σ_m h^{p+m+1}/(m!(p+m+1))``.
    """
    if h >= 0.05:
        moments = [-math.expm1(-h)]
        for p in range(1, count):
            moments.append(h ** p - p * moments[-1])
        return moments
    decay = math.exp(-h)
    return [decay * _moment_series(h, p, h) for p in range(count)]


def decaying_moments(h: float, count: int) -> list[float]:
    """``K_p = ∫_0^h e^{−s} s^p ds`` for p < count, h > 0, float64 (the lower incomplete gamma function).

    Recurrence ``K_0 = 1 − e^{−h}``, ``K_p = p K_{p−1} − h^p e^{−h}`` for h ≥ 1/20 (relative rounding error
    ≲ p!·ε/h); below, the alternating series ``K_p = Σ_m (−1)^m h^{p+m+1}/(m!(p+m+1))``.
    """
    if h >= 0.05:
        decay = math.exp(-h)
        moments = [-math.expm1(-h)]
        for p in range(1, count):
            moments.append(p * moments[-1] - h ** p * decay)
        return moments
    return [_moment_series(h, p, -h) for p in range(count)]


def _moment_series(h: float, p: int, rate: float) -> float:
    """``Σ_m rate^m/m! · h^{p+1}/(p+m+1) = ∫_0^h e^{±u} u^p du`` for rate = ±h (the Taylor series of the
    exponential, integrated term by term), summed until a term is below 1e-18 of the total."""
    total, term, m = 0.0, 1.0, 0  # term = rate^m / m!
    while True:
        contribution = term * h ** (p + 1) / (p + m + 1)
        total += contribution
        if abs(contribution) <= 1e-18 * abs(total):
            return total
        m += 1
        term *= rate / m


def _apply(x, decay, weights, values):
    """``decay · x + Σ w_m q_m``: one fused multiply-add kernel per term (no multiply when decay = 1); on a
    half-precision latent accumulated in float32 and rounded once (:func:`~.common.half_combination`)."""
    if is_half(x):
        return half_combination(x, decay, zip(weights, values))
    total = x * decay if decay != 1.0 else x
    for weight, value in zip(weights, values):
        total = torch.add(total, value, alpha=weight)
    return total


# The VP time of DEIS (ε_s = 1e-3, σ_min = 0.002, σ_max = 80: the constants ComfyUI's deis maps σ with)
_VP_BETA_D = 2 * (math.log(0.002 ** 2 + 1) / 1e-3 - math.log(80.0 ** 2 + 1)) / (1e-3 - 1)
_VP_BETA_MIN = math.log(80.0 ** 2 + 1) - 0.5 * _VP_BETA_D
_GAUSS_LEGENDRE = None  # computed on first use


def vp_time(sigma: float) -> float:
    """``t(σ)`` of the VP-SDE whose marginals match σ: ``σ² = exp(β_min t + β_d t²/2) − 1``."""
    return (math.sqrt(_VP_BETA_MIN ** 2 + 2 * _VP_BETA_D * math.log1p(sigma * sigma)) - _VP_BETA_MIN) / _VP_BETA_D


def _gauss_legendre():
    """24-point Gauss–Legendre nodes and weights on [−1, 1] (exact for polynomials of degree ≤ 47)."""
    global _GAUSS_LEGENDRE
    if _GAUSS_LEGENDRE is None:  # Golub–Welsch: eigen-decomposition of the Legendre Jacobi matrix (float64)
        k = torch.arange(1, 24, dtype=torch.float64)
        off_diagonal = k / torch.sqrt(4 * k * k - 1)
        nodes, vectors = torch.linalg.eigh(torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1))
        _GAUSS_LEGENDRE = [(float(u), float(2 * v * v)) for u, v in zip(nodes, vectors[0])]
    return _GAUSS_LEGENDRE


def warped_time_weights(time, sigma, sigma_next, node_sigmas) -> list[float]:
    """``w_m = ∫_{σ_n}^{σ_{n+1}} ℓ_m(time(s)) ds`` (Lagrange basis on ``time(node_sigmas)``): the velocity
    interpolated in another time variable, integrated in σ by 24-point Gauss–Legendre (float64)."""
    nodes = [time(s) for s in node_sigmas]
    basis = []
    for j, tj in enumerate(nodes):
        def ell(t, j=j, tj=tj):
            value = 1.0
            for m, tm in enumerate(nodes):
                if m != j:
                    value *= (t - tm) / (tj - tm)
            return value
        basis.append(ell)
    half, middle = (sigma_next - sigma) / 2, (sigma_next + sigma) / 2
    points = [(time(middle + half * u), half * w) for u, w in _gauss_legendre()]
    return [sum(weight * ell(t) for t, weight in points) for ell in basis]


def multistep_weights(prediction: str, sigma: float, sigma_next: float, node_sigmas) -> tuple[float, list[float]]:
    """One multistep update ``x_{n+1} = decay · x_n + Σ w_m q_m`` from σ to σ_next on outputs at ``node_sigmas``:
    ``(decay, weights)`` in float64. ``q`` = velocities with σ-time Lagrange weights (``prediction="velocity"``,
    and every step to σ = 0), velocities with VP-time (``"vp"``) or log-σ exponential (``"noise"``) weights, or
    denoised predictions with the exponential weights in λ = −log σ (``"data"``); see the module docstring."""
    if prediction == "velocity" or sigma_next == 0:
        nodes = [s - sigma for s in node_sigmas]
        return 1.0, interpolation_weights(nodes, polynomial_moments(sigma_next - sigma, len(nodes)))
    if prediction == "vp":
        return 1.0, warped_time_weights(vp_time, sigma, sigma_next, node_sigmas)
    nodes = [math.log(sigma / s) for s in node_sigmas]
    h = math.log(sigma / sigma_next)
    if prediction == "noise":  # x_{n+1} − x_n = ∫ v dσ = −σ_n ∫_0^h v(s) e^{−s} ds, s = log(σ_n/σ)
        return 1.0, [-sigma * w for w in interpolation_weights(nodes, decaying_moments(h, len(nodes)))]
    return sigma_next / sigma, interpolation_weights(nodes, exponential_moments(h, len(nodes)))


def extrapolation_amplification(weights) -> float:
    """``Σ|w_m| / |Σ w_m|`` of one multistep update: how much the interpolating polynomial amplifies the model
    outputs' deviations from it over the step (1 for a one-point update; it grows with the order and with the step
    against the spacing of the history — the long first steps of a short schedule)."""
    total = abs(sum(weights))
    return sum(abs(w) for w in weights) / total if total > 0 else math.inf


def variable_order(prediction, sigma, sigma_next, node_sigmas, max_amplification) -> int:
    """The largest number of points ``k ≤ len(node_sigmas)`` whose update has an
    :func:`extrapolation_amplification` of at most ``max_amplification`` (at least 1 point) — the order-selection
    idea of variable-order Adams codes (Shampine & Gordon 1975: lower the order where the higher one does not pay),
    with the amplification of the extrapolation as the cheap, output-free criterion."""
    points = len(node_sigmas)
    while points > 1:
        _, weights = multistep_weights(prediction, sigma, sigma_next, node_sigmas[:points])
        if extrapolation_amplification(weights) <= max_amplification:
            break
        points -= 1
    return points


def warm_start_steps(order: int) -> int:
    """How many first steps a ``warm_start="runge_kutta"`` run makes Runge–Kutta steps: step i has i + 1 points
    (i + 2 with the corrector), local error O(h^(i+2)) (O(h^(i+3))), and one step of local error O(h^p) costs no
    global order up to p (p + 1 with the corrector) — so steps 0 … order − 3."""
    return max(order - 2, 0)


def warm_start_tableau(order: int, corrector: bool):
    """The Runge–Kutta method of those steps: of order ``order`` with the corrector (the run's full order is
    order + 1), ``order − 1`` without (full order ``order``) — RK3, RK4 or Heun."""
    return {2: HEUN, 3: RK3, 4: RK4}[order if corrector else order - 1]


def sample_multistep_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, order=2,
                        prediction="velocity", corrector=True, data_end_sigma=None, max_amplification=None,
                        corrector_max_log_step=None, warm_start="lower_order"):
    """Multistep predictor (``order`` points, 1–4) plus a one-point-higher corrector, 1 NFE per step.

    See the module docstring. ``corrector=False`` gives the plain variable-step Adams–Bashforth
    (``prediction="velocity"``) or DPM-Solver++-type exponential multistep (``"data"``) predictor of order
    ``order``; with the corrector the order is ``order + 1`` on steps that have enough history.
    ``data_end_sigma`` only selects the σ = 0 end (see the module docstring): the model is never evaluated there.
    ``max_amplification`` (≥ 1) and ``corrector_max_log_step`` (> 0): the step-dependent order and corrector rules
    of the module docstring; None switches them off. ``warm_start``: ``"lower_order"`` (1 NFE per step from the
    start) or ``"runge_kutta"`` (full order from σ_max, see the module docstring).
    """
    who = {"data": "fs_exp_abm", "noise": "fs_noise_abm", "vp": "fs_vp_abm"}.get(prediction, "fs_abm")
    check_choice(prediction, MULTISTEP_PREDICTIONS, who, "prediction")
    if order not in (1, 2, 3, 4):
        raise ValueError(f"{who}: order = {order!r} must be 1, 2, 3 or 4")
    if max_amplification is not None:
        check_range(max_amplification, 1.0, math.inf, who, "max_amplification")
    if corrector_max_log_step is not None:
        check_range(corrector_max_log_step, 0.0, math.inf, who, "corrector_max_log_step", low_open=True)
    check_choice(warm_start, WARM_STARTS, who, "warm_start")
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    derivative = ModelDerivative(model, x, sigmas, extra_args, None)
    history_sigmas, history_outputs, history_velocities = [], [], []  # newest first

    denoise_end = grid[-1] == 0 and data_end_sigma is None
    velocity_end = grid[-1] == 0 and not denoise_end  # the step to σ = 0 extrapolates the velocities
    last_step = len(grid) - 2
    warm_steps = warm_start_steps(order) if warm_start == "runge_kutta" else 0

    def remember(i, sigma, evaluation):
        """Put step i's evaluation in the histories, which keep the ``order`` newest entries: the predictor uses
        ``order`` points, the corrector the next evaluation and ``order`` points. Velocities are kept where they are
        used: as the outputs (``prediction="velocity"``), and for the step to σ = 0 (its ``order`` points)."""
        history_sigmas.insert(0, sigma)
        history_outputs.insert(0, evaluation.denoised if prediction == "data" else evaluation.derivative)
        keep_velocity = prediction == "velocity" or (velocity_end and i > last_step - order)
        history_velocities.insert(0, evaluation.derivative if keep_velocity else None)
        for history in (history_sigmas, history_outputs, history_velocities):
            del history[order:]

    evaluation = derivative(x, grid[0]) if len(grid) > 1 else None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        report(callback, x, i, sigmas[i], evaluation.denoised)
        if sigma_next == 0 and denoise_end:
            x = evaluation.denoised.to(x.dtype)  # a float32 D of a half-precision latent: its dtype
            break
        remember(i, sigma, evaluation)
        if i < warm_steps and sigma_next != 0:  # the step to σ = 0 keeps its own end rule
            x = rk_step(derivative, x, sigma, sigma_next, warm_start_tableau(order, corrector),
                        first_derivative=evaluation).x
            evaluation = derivative(x, sigma_next)
            continue
        evaluation = None  # what the updates need is in the histories (peak memory: not held through the next call)
        points = min(order, len(history_sigmas))
        if max_amplification is not None:
            points = variable_order(prediction, sigma, sigma_next, history_sigmas[:points], max_amplification)
        outputs = history_velocities if sigma_next == 0 else history_outputs
        decay, weights = multistep_weights(prediction, sigma, sigma_next, history_sigmas[:points])
        predicted = _apply(x, decay, weights, outputs[:points])
        if sigma_next == 0:
            x = predicted
            break
        evaluation = derivative(predicted, sigma_next)
        large_step = (corrector_max_log_step is not None and len(history_sigmas) > 1
                      and math.log(sigma / sigma_next) > corrector_max_log_step)
        if not corrector or large_step or (denoise_end and i + 2 == len(grid) - 1):
            x = predicted
            continue
        corrector_sigmas = [sigma_next] + history_sigmas[:points]
        newest = evaluation.denoised if prediction == "data" else evaluation.derivative
        decay, weights = multistep_weights(prediction, sigma, sigma_next, corrector_sigmas)
        x = _apply(x, decay, weights, [newest] + history_outputs[:points])
        # PEC: the history keeps the output at the predicted point; x moves to the corrected one
    return steps.finish(x)


def sample_fs_abm(model, x, sigmas, extra_args=None, callback=None, disable=None, order=2, corrector=True,
                  data_end_sigma=None, warm_start="lower_order"):
    """Adams–Bashforth–Moulton PEC in σ on the velocity (1 NFE/step), see :func:`sample_multistep_pc`."""
    return sample_multistep_pc(model, x, sigmas, extra_args, callback, disable, order=order,
                               prediction="velocity", corrector=corrector, data_end_sigma=data_end_sigma,
                               warm_start=warm_start)


def sample_fs_exp_abm(model, x, sigmas, extra_args=None, callback=None, disable=None, order=2, corrector=True,
                      data_end_sigma=None, warm_start="lower_order"):
    """Exponential (data-prediction, λ = −log σ) multistep PEC (1 NFE/step), see :func:`sample_multistep_pc`."""
    return sample_multistep_pc(model, x, sigmas, extra_args, callback, disable, order=order,
                               prediction="data", corrector=corrector, data_end_sigma=data_end_sigma,
                               warm_start=warm_start)


def sample_fs_noise_abm(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, corrector=True,
                        data_end_sigma=None, max_amplification=None, corrector_max_log_step=0.5,
                        warm_start="lower_order"):
    """Noise-prediction exponential multistep PEC in log σ (1 NFE/step), see :func:`sample_multistep_pc`: a
    3-point predictor, the corrector on steps of at most 0.5 in log σ."""
    return sample_multistep_pc(model, x, sigmas, extra_args, callback, disable, order=order,
                               prediction="noise", corrector=corrector, data_end_sigma=data_end_sigma,
                               max_amplification=max_amplification, corrector_max_log_step=corrector_max_log_step,
                               warm_start=warm_start)


def sample_fs_vp_abm(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, corrector=True,
                     data_end_sigma=None, max_amplification=4.0, corrector_max_log_step=1.0,
                     warm_start="lower_order"):
    """Velocity multistep PEC in DEIS's VP time (1 NFE/step), see :func:`sample_multistep_pc`: up to 3 predictor
    points (fewer where the extrapolation would amplify the outputs' deviations more than 4×), the corrector on
    steps of at most 1 in log σ."""
    return sample_multistep_pc(model, x, sigmas, extra_args, callback, disable, order=order,
                               prediction="vp", corrector=corrector, data_end_sigma=data_end_sigma,
                               max_amplification=max_amplification, corrector_max_log_step=corrector_max_log_step,
                               warm_start=warm_start)
