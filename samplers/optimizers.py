"""Optimizer-style samplers and their exact meaning as ODE integrators.

Flow-matching Euler ``x ← x + h·d`` (h = σ_{k+1} − σ_k < 0, d = velocity) has the form of a gradient-descent
step with learning rate |h| and ``−d`` as gradient. The optimizer ideas below are each an integrator; their
docstrings state which one, and its order (tests measure it). All cost 1 NFE per step (Nesterov's first
step and nothing else costs 2). ``h_k`` is the current step, ``r_k = h_k/h_{k−1}`` the step ratio.

* heavy-ball, ``variant="gradient"``: ``x_{k+1} = x_k + h_k[(1+β)d_k − β d_{k−1}]`` = Adams–Bashforth 2 for
  β = 1/2 (uniform grid, or any grid with ``grid_aware=True``, β_k = β·r_k): order 2 then, else 1.
* heavy-ball, ``variant="polyak"``: Polyak's momentum on the state,
  ``x_{k+1} = x_k + (1−β)h_k d_k + β r_k (x_k − x_{k−1})``, i.e. an EMA velocity buffer
  ``m_k = β m_{k−1} + (1−β) d_k``, ``x_{k+1} = x_k + h_k m_k``: a consistent two-step method of order 1 for
  every β ∈ [0, 1) with error constant (1+β)/(1−β) times Euler's (3× at β = 1/2) — optimizer momentum
  lags the path it should follow.
* Nesterov look-ahead: evaluate at the extrapolated point ``x̃ = x_k + c r_k (x_k − x_{k−1})`` (σ̃ = σ_k + c h_k)
  and step ``x_{k+1} = x_k + h_k d(x̃, σ̃)``: explicit midpoint with an extrapolated midpoint state, order 2
  for c = 1/2, else 1. ``variant="nag"`` also carries the momentum, ``x_{k+1} = x̃ + (1−c)h_k d(x̃, σ̃)``
  (Euler from the look-ahead point): order 1 for every c.
* gradient estimation (Permenter & Yuan 2024): ``d̄ = γ d_k + (1−γ) d_{k−1}`` (ComfyUI's form, γ = 2): the
  derivative extrapolated to σ_k + (γ−1)h_k; order 2 only for γ = 3/2 (= AB2; identical to heavy-ball
  ``gradient`` with β = γ − 1), order 1 otherwise (γ = 2: error constant −1/2, Euler's with opposite sign).
* secant ("quasi-Newton"): Barzilai–Borwein secant curvature ``λ = ⟨Δd, Δx⟩/‖Δx‖²`` per sample as the linear
  part of an exponential integrator. ``variant="euler"``: ``x_{k+1} = x_k + h_k φ₁(λh_k) d_k``,
  ``φ₁(z) = (e^z − 1)/z`` — the curvature-aware Newton-like step length, order 1. ``variant="ab2"`` (default):
  exponential AB2 with that λ, order 2 for any bounded λ, AB2 at λ = 0, exact for linear velocity fields.

Equal consecutive σ are skipped (:class:`~.common.SigmaSteps`): the step ratios and the secant never see a zero
step. Half-precision latents: updates are accumulated in float32 and rounded once
(:func:`~.common.half_combination`); the secant's dots, curvature and φ values are float64.
"""
from __future__ import annotations

import math

import torch

from .common import (ModelDerivative, SigmaSteps, append_dims, check_choice, check_range, half_combination,
                     is_half, progress_range, report, validate_data_end_sigma, validate_latent, working_dtype)


def _setup(model, x, sigmas, extra_args, callback, data_end_sigma, who):
    """(:class:`~.common.SigmaSteps`, derivative) after validating the inputs."""
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    return steps, ModelDerivative(model, x, steps.sigmas, extra_args, data_end_sigma)


def _step(x, terms):
    """``x + Σ w·t`` (w Python floats): as written for float32/float64, :func:`~.common.half_combination` for half
    precision."""
    if is_half(x):
        return half_combination(x, 1.0, terms)
    for weight, tensor in terms:
        x = x + tensor * weight
    return x


def _gradient_extrapolation(model, x, sigmas, extra_args, callback, disable, gamma, grid_aware,
                            data_end_sigma, who):
    """Shared loop of heavy-ball (gradient form) and gradient estimation: ``d̄ = γ_k d_k + (1−γ_k) d_{k−1}``."""
    steps, derivative = _setup(model, x, sigmas, extra_args, callback, data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    previous = None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        h = sigma_next - sigma
        evaluation = derivative(x, sigma)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        d = evaluation.derivative
        if previous is None:
            x = _step(x, [(h, d)])
        else:
            g = 1.0 + (gamma - 1.0) * (h / (sigma - grid[i - 1])) if grid_aware else gamma
            if is_half(x):
                x = half_combination(x, 1.0, [(g * h, d), ((1.0 - g) * h, previous)])
            else:
                x = x + (d * g + previous * (1.0 - g)) * h
        previous = d
    return steps.finish(x)


def sample_heavy_ball(model, x, sigmas, extra_args=None, callback=None, disable=None, beta=0.5,
                      variant="gradient", grid_aware=False, data_end_sigma=None):
    """Heavy-ball momentum (Polyak 1964) as an integrator; see the module docstring.

    ``variant="gradient"``: ``x + h[(1+β)d_k − βd_{k−1}]`` — AB2 for β = 1/2 (order 2), else order 1;
    ``grid_aware`` scales β by the step ratio so β = 1/2 is variable-step AB2.
    ``variant="polyak"``: EMA momentum ``m_k = βm_{k−1} + (1−β)d_k``, ``x + h m_k`` — order 1, error constant
    (1+β)/(1−β) × Euler's. First step: Euler. 1 NFE/step.
    """
    who = "fs_heavy_ball"
    check_choice(variant, ("gradient", "polyak"), who, "variant")
    if variant == "gradient":
        beta = check_range(beta, -1.0, 1.0, who, "beta")
        return _gradient_extrapolation(model, x, sigmas, extra_args, callback, disable, 1.0 + beta,
                                       grid_aware, data_end_sigma, who)
    beta = check_range(beta, 0.0, 1.0, who, "beta", high_open=True)
    steps, derivative = _setup(model, x, sigmas, extra_args, callback, data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    momentum = None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        evaluation = derivative(x, sigma)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        d = evaluation.derivative
        if momentum is None:
            momentum = d
        elif is_half(x):  # the buffer in float32: an EMA rounded to half precision every step drifts
            momentum = half_combination(momentum, beta, [(1.0 - beta, d)], dtype=torch.float32)
        else:
            momentum = momentum * beta + d * (1.0 - beta)
        x = _step(x, [(sigma_next - sigma, momentum)])
    return steps.finish(x)


def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, gamma=2.0,
                               grid_aware=False, data_end_sigma=None):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models from an
    optimization perspective"), ComfyUI's ``sample_gradient_estimation`` form ``d̄ = γd_k + (1−γ)d_{k−1}``.

    Integrator: ``d̄`` is the derivative linearly extrapolated to σ_k + (γ−1)h_k (uniform grid); with
    ``grid_aware`` γ_k = 1 + (γ−1)h_k/h_{k−1} extrapolates there on any grid. Order 2 iff γ = 3/2 (= AB2),
    order 1 otherwise (default γ = 2). First step: Euler. 1 NFE/step.
    """
    who = "fs_grad_est"
    gamma = check_range(gamma, 0.0, 4.0, who, "gamma")
    return _gradient_extrapolation(model, x, sigmas, extra_args, callback, disable, gamma, grid_aware,
                                   data_end_sigma, who)


def sample_nesterov(model, x, sigmas, extra_args=None, callback=None, disable=None, lookahead=0.5,
                    variant="lookahead", data_end_sigma=None):
    """Nesterov look-ahead (Nesterov 1983) as an integrator; see the module docstring.

    The look-ahead point ``x̃ = x_k + c·(h_k/h_{k−1})(x_k − x_{k−1})`` estimates the path at σ_k + c·h_k
    (c = ``lookahead`` ∈ [0, 1)); the first step predicts it with Euler instead (2 NFE, an RK2 step).
    ``variant="lookahead"``: ``x_{k+1} = x_k + h_k d(x̃)`` — order 2 for c = 1/2 (explicit midpoint with an
    extrapolated midpoint state), order 1 otherwise. ``variant="nag"``: ``x_{k+1} = x̃ + (1−c)h_k d(x̃)``
    (momentum carried, Euler from the look-ahead point) — order 1. 1 NFE/step after the first.
    The callback's ``denoised`` is the look-ahead prediction.
    """
    who = "fs_nesterov"
    check_choice(variant, ("lookahead", "nag"), who, "variant")
    c = check_range(lookahead, 0.0, 1.0, who, "lookahead", high_open=True)
    steps, derivative = _setup(model, x, sigmas, extra_args, callback, data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    previous_x = None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        h = sigma_next - sigma
        first = None
        if previous_x is None:
            first = derivative(x, sigma)
            report(callback, x, i, sigmas[i], first.denoised)
            lookahead_x = _step(x, [(c * h, first.derivative)])
        elif is_half(x):
            ratio = c * h / (sigma - grid[i - 1])
            lookahead_x = half_combination(x, 1.0 + ratio, [(-ratio, previous_x)])
        else:
            lookahead_x = x + (x - previous_x) * (c * h / (sigma - grid[i - 1]))
        if c == 0.0:
            evaluation = first if previous_x is None else derivative(x, sigma)
        else:
            first = None  # its d is in the look-ahead point: not held through the next model call (peak memory)
            evaluation = derivative(lookahead_x, sigma + c * h)
        if previous_x is not None:
            report(callback, x, i, sigmas[i], evaluation.denoised)
        d = evaluation.derivative
        first = evaluation = None  # D is reported; the update needs only d
        previous_x = x
        if variant == "nag":
            x = _step(lookahead_x, [((1.0 - c) * h, d)])
        else:
            x = _step(x, [(h, d)])
        # through the next model call the loop holds x, the previous x and the new look-ahead point only
        lookahead_x = d = None
    return steps.finish(x)


def _phi(z: torch.Tensor):
    """φ₁(z) = (e^z − 1)/z and φ₂(z) = (φ₁(z) − 1)/z (one expm1 for both). Near 0 (|z| < 1e-3), where φ₁ − 1
    cancels, φ₂ is its Taylor series to z² (error < z³/120) and φ₁ = 1 + zφ₂. Few ops on purpose: on ms-scale
    models the per-step tensor calls are what shows."""
    small = z.abs() < 1e-3
    safe = torch.where(small, 1.0, z)
    phi1 = torch.expm1(safe) / safe
    phi2 = torch.where(small, (z * (1 / 24) + 1 / 6) * z + 0.5, (phi1 - 1.0) / safe)
    return torch.where(small, z * phi2 + 1.0, phi1), phi2


# Devices on which fs_secant's per-sample coefficients ([B] numbers) are computed in Python floats: on the CPU
# ~20 tensor calls on [B]-sized tensors cost more than the host arithmetic and reading the values costs no
# sync; on an accelerator, .tolist() would stall the queue every step, so the tensors stay there.
HOST_COEFFICIENT_DEVICES = ("cpu",)


def _secant_coefficients(numerator, denominator, h, step_ratio, limit, tiny):
    """(h·φ₁(z), φ₂(z)·h²/h_prev, −λ) per sample from the secant Rayleigh quotient λ = numerator/denominator,
    z = clip(λh, ±limit), as [B] float64 tensors (float32 on Apple's MPS, which has no float64)."""
    work = torch.float32 if numerator.device.type == "mps" else torch.float64
    curvature = numerator.to(work) / denominator.to(work).clamp_min(tiny if work == torch.float64
                                                                     else torch.finfo(work).tiny)
    z = (curvature * h).clamp(-limit, limit)
    phi1, phi2 = _phi(z)
    return phi1 * h, phi2 * step_ratio, z / -h


def _secant_coefficients_on_host(numerator, denominator, h, step_ratio, limit, tiny):
    """:func:`_secant_coefficients` in Python floats (float64) from the [B] tensors read to the host, as lists."""
    step, correction, negative_curvature = [], [], []
    for num, den in zip(numerator.tolist(), denominator.tolist()):
        z = min(max(num / max(den, tiny) * h, -limit), limit)
        phi1, phi2 = _phi_scalar(z)
        step.append(phi1 * h)
        correction.append(phi2 * step_ratio)
        negative_curvature.append(z / -h)
    return step, correction, negative_curvature


def _phi_scalar(z: float) -> tuple[float, float]:
    """:func:`_phi` for one Python float."""
    if abs(z) < 1e-3:
        phi2 = (z * (1 / 24) + 1 / 6) * z + 0.5
        return z * phi2 + 1.0, phi2
    phi1 = math.expm1(z) / z
    return phi1, (phi1 - 1.0) / z


def _per_sample(values, like: torch.Tensor) -> torch.Tensor:
    """[B] float64 coefficients (a list or a tensor) cast once to ``like``'s working dtype
    (:func:`~.common.working_dtype`) and shaped to broadcast against ``like`` [B, ...]."""
    dtype = working_dtype(like)
    if not isinstance(values, torch.Tensor):
        values = torch.tensor(values, dtype=dtype)
    elif values.dtype != dtype:
        values = values.to(dtype)
    return append_dims(values, like.ndim)


def _secant_update(x, d, previous, h, step_ratio, variant, limit, tiny, coefficients):
    """x_{k+1} of :func:`sample_secant` from ``x = x_k``, ``d = d_k``, ``previous = (x_{k−1}, d_{k−1})``,
    ``step_ratio = h_k²/h_{k−1}``. A function of its own, so that Δx, Δd and the other latent-sized temporaries
    are released before the next model call."""
    previous_x, previous_d = previous
    half = is_half(x)
    if half:  # differences and dots in float32: the states' difference cancels
        dx, dd = x.float() - previous_x.float(), d.float() - previous_d.float()
    else:
        dx, dd = x - previous_x, d - previous_d
    flat_dx = dx.reshape(dx.shape[0], -1)
    numerator = torch.linalg.vecdot(dd.reshape(dd.shape[0], -1), flat_dx)
    denominator = torch.linalg.vecdot(flat_dx, flat_dx)
    step, correction, negative_curvature = coefficients(numerator, denominator, h, step_ratio, limit, tiny)
    x_next = torch.addcmul(x, d, _per_sample(step, x))
    if variant == "ab2":
        # N_k − N_{k−1} = (d_k − d_{k−1}) − λ (x_k − x_{k−1}) with the same clipped λ = z/h
        nonlinear_change = torch.addcmul(dd, dx, _per_sample(negative_curvature, x))
        x_next = torch.addcmul(x_next, nonlinear_change, _per_sample(correction, x))
    if half:  # float32 coefficients promoted the update to float32: one rounding back
        x_next = x_next.to(x.dtype)
    return x_next


def sample_secant(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="ab2",
                  max_curvature_step=2.0, data_end_sigma=None):
    """Curvature-aware secant ("quasi-Newton") sampler: exponential integrators (Hochbruck & Ostermann 2010,
    "Exponential integrators", Acta Numerica; Cox & Matthews 2002, ETD2) whose linear part is the
    Barzilai–Borwein (1988) secant estimate of the Jacobian along the path.

    ``λ_k = ⟨d_k − d_{k−1}, x_k − x_{k−1}⟩/‖x_k − x_{k−1}‖²`` per sample (the Rayleigh quotient of the Jacobian on
    the last step, as quasi-Newton methods estimate a Hessian from successive gradients), clipped so that
    ``|z| = |λ_k h_k| ≤ max_curvature_step``.
    ``variant="euler"``: ``x_{k+1} = x_k + h_k φ₁(z) d_k`` — the Newton-like step length h·φ₁(z) stretched or
    shrunk by the curvature; exact for d = λx, order 1 in general.
    ``variant="ab2"`` (default): exponential Adams–Bashforth 2 with ``N = d − λ_k x``,
    ``x_{k+1} = x_k + h φ₁(z) d_k + h φ₂(z) (h_k/h_{k−1}) (N_k − N_{k−1})``: order 2 for any bounded λ, equal to
    variable-step AB2 at λ = 0, exact for linear d = λx + c. First step: Euler. 1 NFE/step.
    """
    who = "fs_secant"
    check_choice(variant, ("ab2", "euler"), who, "variant")
    limit = check_range(max_curvature_step, 0.0, 50.0, who, "max_curvature_step")
    steps, derivative = _setup(model, x, sigmas, extra_args, callback, data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    tiny = torch.finfo(torch.float64).tiny
    coefficients = (_secant_coefficients_on_host if x.device.type in HOST_COEFFICIENT_DEVICES
                    else _secant_coefficients)
    previous = None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        h = sigma_next - sigma
        evaluation = derivative(x, sigma)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        d = evaluation.derivative
        evaluation = None  # D is reported; the update needs only d (peak memory)
        if previous is None:
            x_next = _step(x, [(h, d)])
        else:
            x_next = _secant_update(x, d, previous, h, h * h / (sigma - grid[i - 1]), variant, limit, tiny,
                                    coefficients)
        previous = (x, d)  # through the next model call: the new x and these two
        x, x_next, d = x_next, None, None
    return steps.finish(x)
