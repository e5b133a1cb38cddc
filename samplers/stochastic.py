"""Diffusion-side samplers: DDIM data-prediction steps, flow SDE (DDIM-η) and Langevin predictor–corrector.

Both model families share one form. With ``a(σ) = 1 − σ`` for flow/CONST models (``flow_model=True``,
``x_σ = (1−σ)x0 + σε``) and ``a = 1`` for VE models in k-diffusion space (``x = x0 + σε``):
noise estimate ``ε̂ = (x − a D)/σ``, score ``∇log p_σ(x) = −(x − a D)/σ²``.

DDIM-η step from σ to σ' < σ (Song, Meng & Ermon 2021, eq. 12, in this parameterisation):
``x' = a' D + √(σ'² − s²)·ε̂ + s·z``, ``z ~ N(0, I)``, ``s = η σ' √(1 − (σ'a/(σa'))²)``.
Why it preserves the marginal: the forward path from σ' to σ is the Gaussian transition
``x_σ = (a/a') x_σ' + √(σ² − (aσ'/a')²)·ξ``; the posterior of ``x_σ'`` given ``(x_σ, x0)`` is Gaussian with
variance ``σ'²(1 − (aσ'/(a'σ))²) = s²(η=1)`` and mean ``a'x0 + √(σ'² − s²)(x_σ − a x0)/σ``. Any η ∈ [0, 1]
keeps ``a'x0 + √(σ'² − s²)ε + s z`` distributed as ``a'x0 + σ'·N(0, I)`` (noise variance σ'² − s² + s² = σ'²),
so if ``x_σ ~ p_σ`` then ``x_σ' ~ p_σ'`` when x0 and ε are drawn from the posterior; replacing them by the
posterior means D and ε̂ is the usual O(step) discretisation, so the chain converges to the marginals as the
steps shrink (η = 1 is DDPM/ancestral sampling, η = 0 the probability-flow ODE). η = 0 is exactly Euler
``x + (σ' − σ)(x − D)/σ`` in both families (Karras et al. 2022, §3), hence order 1.
The last step to σ' = 0 returns D (s = 0 there), so the model is never evaluated at σ = 0.

Noise: ``noise_sampler(sigma, sigma_next)`` as in k-diffusion, default seeded from ``extra_args["seed"]``
(deterministic given the seed), else torch's global RNG.

Equal consecutive σ are skipped (:class:`~.common.SigmaSteps`): no model call, no noise draw, no Langevin
correction there, so a grid with repeats gives the result of the grid without them (for a fixed seed too).
Half-precision latents: the updates are accumulated in float32 and rounded once
(:func:`~.common.half_combination`), the Langevin step sizes computed in float32 (:func:`~.common.batch_norm`).
"""
from __future__ import annotations

import math

import torch

from .common import (Evaluation, ModelDerivative, SigmaSteps, append_dims, batch_norm, check_choice, check_range,
                     half_combination, is_half, progress_range, report, resolve_noise_sampler, validate_data_end_sigma,
                     validate_latent)
from .runge_kutta import end_tableau, rk_step
from .tableaux import get_tableau


def _check_family(grid, flow_model, who):
    if flow_model and grid[0] > 1 + 1e-6:  # float32 schedules may round 1 up by an ulp
        raise ValueError(f"{who}: sigmas[0] = {grid[0]} exceeds 1, the noise end of a flow model; "
                         f"pass flow_model=False for VE/EPS/V models")


def ddim_coefficients(sigma: float, sigma_next: float, eta: float, flow_model: bool):
    """``(c_x, c_D, s)`` with ``x' = c_x·x + c_D·D + s·z`` for the DDIM-η step (float64 Python floats)."""
    a = max(0.0, 1.0 - sigma) if flow_model else 1.0
    a_next = max(0.0, 1.0 - sigma_next) if flow_model else 1.0
    if sigma_next == 0:
        return 0.0, 1.0, 0.0
    ratio = sigma_next * a / (sigma * a_next) if a_next > 0 else 1.0
    s = eta * sigma_next * math.sqrt(max(0.0, 1.0 - ratio * ratio))
    keep = math.sqrt(max(0.0, sigma_next * sigma_next - s * s))
    return keep / sigma, a_next - keep * a / sigma, s


def _sample_ddim_eta(model, x, sigmas, extra_args, callback, disable, eta, flow_model, noise_sampler,
                     s_noise, data_end_sigma, who):
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    validate_data_end_sigma(data_end_sigma, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    _check_family(grid, flow_model, who)
    eta = check_range(eta, 0.0, 1.0, who, "eta")
    derivative = ModelDerivative(model, x, sigmas, extra_args)
    noise = resolve_noise_sampler(x, extra_args, noise_sampler) if eta > 0 else None
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        denoised, _ = derivative.denoise(x, sigma)
        report(callback, x, i, sigmas[i], denoised)
        c_x, c_d, s = ddim_coefficients(sigma, sigma_next, eta, flow_model)
        if is_half(x):
            terms = [(c_d, denoised)] + ([(s * s_noise, noise(sigmas[i], sigmas[i + 1]))] if s > 0 else [])
            x = half_combination(x, c_x, terms)
            continue
        x = x * c_x + denoised * c_d
        if s > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * (s * s_noise)
    return steps.finish(x)


def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, flow_model=True, eta=0.0,
                noise_sampler=None, s_noise=1.0, data_end_sigma=None):
    """DDIM data-prediction steps (Song, Meng & Ermon 2021): ``x' = a'D + σ'ε̂`` (η = 0, deterministic,
    = Euler, order 1, 1 NFE/step); η > 0 adds marginal-preserving noise (see module docstring).
    ``flow_model``: True for flow/CONST models (a = 1 − σ), False for VE/EPS/V models (a = 1).
    ``data_end_sigma`` is accepted for a uniform interface and unused: the step to σ' = 0 returns D."""
    return _sample_ddim_eta(model, x, sigmas, extra_args, callback, disable, eta, flow_model, noise_sampler,
                            s_noise, data_end_sigma, "fs_ddim")


def sample_flow_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, flow_model=True,
                    noise_sampler=None, s_noise=1.0, data_end_sigma=None):
    """Stochastic flow sampling with marginal-preserving noise: the DDIM-η step on the rectified-flow path
    ``x' = (1−σ')D + √(σ'² − s²)ε̂ + s z``, ``s = ησ'√(1 − (σ'(1−σ)/(σ(1−σ')))²)`` (Song et al. 2021 applied to
    ``x_σ = (1−σ)x0 + σε``; derivation in the module docstring). η = 1: the posterior (DDPM-like) noise;
    η = 0: DDIM/Euler. 1 NFE/step; weak order 1. ``flow_model=False`` gives k-diffusion's ancestral step
    for VE models. ``data_end_sigma`` is accepted and unused (the last step returns D)."""
    return _sample_ddim_eta(model, x, sigmas, extra_args, callback, disable, eta, flow_model, noise_sampler,
                            s_noise, data_end_sigma, "fs_flow_sde")


def _langevin_correction(x, denoised, sigma, a, z, snr, step_norm, tiny):
    """One Langevin corrector step of :func:`sample_langevin_pc` at ``sigma`` with the noise draw ``z``:
    ``x + εg + √(2ε)z``, ``g = −(x − aD)/σ²``, ``ε = 2(r‖z‖/‖g‖)²``. A function of its own, so that the score, the
    noise draw and the other latent-sized temporaries are released before the next model call."""
    half = is_half(x)
    if half:
        score = half_combination(x, -1.0 / (sigma * sigma), [(a / (sigma * sigma), denoised)], dtype=torch.float32)
    else:
        score = (x - denoised * a) * (-1.0 / (sigma * sigma))
    noise_norm, score_norm = batch_norm(z), batch_norm(score)
    if step_norm == "batch":
        noise_norm, score_norm = noise_norm.mean(), score_norm.mean()
    epsilon = 2.0 * (snr * noise_norm / score_norm.clamp_min(tiny)) ** 2
    epsilon = append_dims(epsilon, x.ndim)
    update = x + epsilon * score + torch.sqrt(2.0 * epsilon) * z  # float32 for a half-precision x
    return update.to(x.dtype) if half else update


def sample_langevin_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, predictor="euler",
                       corrector_steps=1, snr=0.16, flow_model=True, data_end_sigma=None, noise_sampler=None,
                       step_norm="per_sample"):
    """Predictor–corrector sampling (Song et al. 2021, "Score-based generative modeling through SDEs",
    Alg. 4/5) for diffusion and flow models.

    Predictor: one step of the RK tableau ``predictor`` (any name in ``TABLEAUX``; σ = 0 rule of
    :mod:`.common`). Corrector: ``corrector_steps`` Langevin steps at the new σ' > 0 with the SNR rule
    ``g = score``, ``z ~ N(0, I)``, ``ε = 2(r‖z‖/‖g‖)²`` (per sample, r = ``snr``),
    ``x ← x + ε g + √(2ε) z`` — noisy gradient ascent on log p_σ', which leaves p_σ' invariant as ε → 0.
    Score: flow ``−(x − (1−σ)D)/σ²``, VE ``−(x − D)/σ²``. NFE/step = predictor stages + corrector_steps
    (no correction at σ' = 0).

    ``step_norm="per_sample"`` takes ‖z‖, ‖g‖ per sample (each image its own step); ``"batch"`` uses their
    batch means (Song et al.'s code), one ε for the batch. A per-sample ε depends on x and z, which biases the
    stationary law in low dimension (ε blows up where ‖g‖ → 0, near modes); in image-sized latents both norms
    concentrate and the two rules agree. The unit tests check the marginal with ``"batch"`` in 4-D and with
    ``"per_sample"`` in 256-D.
    """
    who = "fs_langevin_pc"
    tableau = get_tableau(predictor, who)
    steps = SigmaSteps(sigmas, who, callback)
    validate_latent(x, who)
    grid, sigmas, callback = steps.grid, steps.sigmas, steps.callback
    _check_family(grid, flow_model, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"{who}: corrector_steps = {corrector_steps!r} must be an integer ≥ 0")
    snr = check_range(snr, 0.0, 10.0, who, "snr", low_open=True)
    check_choice(step_norm, ("per_sample", "batch"), who, "step_norm")
    derivative = ModelDerivative(model, x, sigmas, extra_args, data_end_sigma)
    noise = resolve_noise_sampler(x, extra_args, noise_sampler)
    tiny = torch.finfo(torch.float32 if is_half(x) else x.dtype).tiny
    for i in progress_range(len(grid) - 1, disable=disable):
        sigma, sigma_next = grid[i], grid[i + 1]
        first = derivative(x, sigma)
        report(callback, x, i, sigmas[i], first.denoised)
        first = Evaluation(first.derivative, None)  # D is reported; the predictor needs only d (peak memory)
        stepper = end_tableau(derivative, tableau) if sigma_next == 0 else tableau
        x = rk_step(derivative, x, sigma, sigma_next, stepper, first_derivative=first).x
        first = None  # through the corrector's model calls the loop holds x only
        if sigma_next == 0:
            continue
        a_next = max(0.0, 1.0 - sigma_next) if flow_model else 1.0
        for _ in range(corrector_steps):
            denoised, _ = derivative.denoise(x, sigma_next)
            x = _langevin_correction(x, denoised, sigma_next, a_next, noise(sigmas[i], sigmas[i + 1]), snr, step_norm,
                                     tiny)
            denoised = None
    return steps.finish(x)
