"""σ schedules: pure functions returning a 1-D tensor of length ``steps + 1`` that decreases to 0.

All take ``steps`` first and ``sigma_max``/``sigma_min`` where meaningful, compute in float64 and return
``dtype`` (float32 by default, as ComfyUI's ``SIGMAS``). ``SCHEDULES`` maps names to them; every entry
accepts ``(steps, sigma_max=..., sigma_min=..., **options)``. :func:`trajectory_adaptive_sigmas` needs a
model and is therefore not in ``SCHEDULES``. Validation helpers shared by all samplers live in
:mod:`.common` and are re-exported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import ModelDerivative, SigmaSteps, validate_data_end_sigma, validate_latent, validate_sigmas
from .runge_kutta import rk_step
from .tableaux import EULER, HEUN

__all__ = ["validate_sigmas", "validate_latent", "uniform_sigmas", "sd3_shift", "shifted_sigmas",
           "flux_mu", "flux_shift", "flux_sigmas", "cosine_sigmas", "linear_quadratic_sigmas",
           "karras_sigmas", "exponential_sigmas", "trajectory_adaptive_sigmas", "trajectory_adaptive_plan",
           "TrajectoryPlan", "SCHEDULES", "SCHEDULE_INFO"]


def _check_steps(steps, who):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{who}: steps = {steps!r} must be an integer ≥ 1")
    return steps


def _check_bounds(sigma_max, sigma_min, who, flow=False, positive_min=False):
    sigma_max, sigma_min = float(sigma_max), float(sigma_min)
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min)):
        raise ValueError(f"{who}: sigma_max = {sigma_max} and sigma_min = {sigma_min} must be finite")
    if positive_min and not sigma_min > 0:
        raise ValueError(f"{who}: sigma_min = {sigma_min} must be > 0 for this schedule")
    if not 0 <= sigma_min < sigma_max:
        raise ValueError(f"{who}: need 0 ≤ sigma_min < sigma_max, got sigma_min = {sigma_min}, "
                         f"sigma_max = {sigma_max}")
    if flow and sigma_max > 1:
        raise ValueError(f"{who}: sigma_max = {sigma_max} exceeds 1, the noise end of a flow model")
    return sigma_max, sigma_min


def _finish(values, dtype):
    """Append the final 0 when missing and convert."""
    values = [float(v) for v in values]
    if values[-1] != 0.0:
        values.append(0.0)
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def _lerp_grid(start, stop, count):
    """``count`` equally spaced values; the end points are exact (a rounded end could land just past 0)."""
    if count == 1:
        return [start]
    return [start + (stop - start) * k / (count - 1) for k in range(count - 1)] + [stop]


def uniform_sigmas(steps, sigma_max=1.0, sigma_min=0.0, dtype=torch.float32):
    """Uniform in σ (the flow-matching default; Lipman et al. 2023). With ``sigma_min = 0`` these are
    ``steps + 1`` equally spaced σ from ``sigma_max`` to 0, else ``steps`` from sigma_max to sigma_min
    and a final 0."""
    who = "uniform_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who)
    if sigma_min == 0:
        return _finish(_lerp_grid(sigma_max, 0.0, steps + 1), dtype)
    return _finish(_lerp_grid(sigma_max, sigma_min, steps), dtype)


def sd3_shift(sigma, shift: float):
    """SD3 time shift ``σ' = sσ/(1 + (s − 1)σ)`` (Esser et al. 2024, eq. 23). Works on floats and tensors."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def _sd3_unshift(sigma, shift):
    return sigma / (shift - (shift - 1) * sigma)


def shifted_sigmas(steps, sigma_max=1.0, sigma_min=0.0, shift=3.0, dtype=torch.float32):
    """SD3-shifted flow schedule: uniform in the unshifted time t between the unshifted images of
    sigma_max and sigma_min, then ``σ = sd3_shift(t, shift)`` (Esser et al. 2024)."""
    who = "shifted_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who, flow=True)
    if not (math.isfinite(float(shift)) and shift > 0):
        raise ValueError(f"{who}: shift = {shift} must be a positive number (SD3 uses 3.0)")
    t_max, t_min = _sd3_unshift(sigma_max, shift), _sd3_unshift(sigma_min, shift)
    count = steps + 1 if sigma_min == 0 else steps
    return _finish([sd3_shift(t, shift) for t in _lerp_grid(t_max, t_min, count)], dtype)


def flux_mu(width, height, base_shift=0.5, max_shift=1.15):
    """Flux's resolution-dependent μ: the line through (256, base_shift) and (4096, max_shift) evaluated
    at the packed sequence length ``(width/16)·(height/16)`` (Flux ``get_lin_function``; ComfyUI's
    ModelSamplingFlux uses the same ``width·height/256``)."""
    for name, value in (("width", width), ("height", height)):
        if not (math.isfinite(float(value)) and value > 0):
            raise ValueError(f"flux_mu: {name} = {value} must be a positive number of pixels")
    slope = (max_shift - base_shift) / (4096 - 256)
    intercept = base_shift - slope * 256
    return slope * (width * height / 256.0) + intercept


def flux_shift(sigma: float, mu: float) -> float:
    """Flux time shift ``σ' = e^μ/(e^μ + (1/σ − 1))`` with σ' = 0 at σ = 0."""
    if sigma <= 0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigma - 1.0))


def _flux_unshift(sigma, mu):
    if sigma <= 0:
        return 0.0
    return 1.0 / (1.0 + math.exp(mu) * (1.0 / sigma - 1.0))


def flux_sigmas(steps, sigma_max=1.0, sigma_min=0.0, width=1024, height=1024, mu=None,
                dtype=torch.float32):
    """Flux schedule: uniform in unshifted time, shifted by μ = :func:`flux_mu` (width, height) unless
    ``mu`` is given (Black Forest Labs, Flux.1 reference ``get_schedule``)."""
    who = "flux_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who, flow=True)
    mu = flux_mu(width, height) if mu is None else float(mu)
    t_max, t_min = _flux_unshift(sigma_max, mu), _flux_unshift(sigma_min, mu)
    count = steps + 1 if sigma_min == 0 else steps
    return _finish([flux_shift(t, mu) for t in _lerp_grid(t_max, t_min, count)], dtype)


def cosine_sigmas(steps, sigma_max=1.0, sigma_min=0.0, flow=True, dtype=torch.float32):
    """The cosine schedule (Nichol & Dhariwal 2021, offset s = 0): uniform in t with the VP noise level
    ``α = cos(πt/2)``, ``σ_vp = sin(πt/2)``, i.e. VE ``σ = tan(πt/2)``; for flow models
    (``flow=True``) the same path in flow time ``σ = σ_ve/(1 + σ_ve) = sin/(sin + cos)``.
    Dense near both ends, sparse in the middle."""
    who = "cosine_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who, flow=flow)

    def to_t(sigma):
        ve = (math.inf if sigma >= 1 else sigma / (1 - sigma)) if flow else sigma
        return 2 / math.pi * math.atan(ve)

    def from_t(t):
        s, c = math.sin(math.pi * t / 2), math.cos(math.pi * t / 2)
        return s / (s + c) if flow else (s / c if c > 0 else math.inf)

    count = steps + 1 if sigma_min == 0 else steps
    values = [from_t(t) for t in _lerp_grid(to_t(sigma_max), to_t(sigma_min), count)]
    values[0] = sigma_max
    if sigma_min > 0:
        values[-1] = sigma_min
    return _finish(values, dtype)


def linear_quadratic_sigmas(steps, sigma_max=1.0, sigma_min=0.0, threshold_noise=0.025, linear_steps=None,
                            dtype=torch.float32):
    """Linear-quadratic flow schedule (Movie Gen, Polyak et al. 2024; ComfyUI's ``linear_quadratic``).

    Progress ``τ = 1 − σ/σ_max`` grows linearly for the first ``L = linear_steps`` (default steps//2)
    steps, ``τ_i = i·θ/L`` up to ``θ = threshold_noise``, then along the quadratic in i that meets
    τ = θ with the same slope θ/L (C¹) and reaches τ = 1 at i = steps. This is the same function as
    ComfyUI's coefficients (they expand this quadratic); ``steps = 1`` gives ``[σ_max, 0]``.
    ``sigma_min`` must be 0 (the schedule is defined to reach the data end).
    """
    who = "linear_quadratic_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who)
    if sigma_min != 0:
        raise ValueError(f"{who}: sigma_min = {sigma_min} must be 0; the schedule ends at the data end")
    if steps == 1:
        return _finish([sigma_max, 0.0], dtype)
    if not 0 < threshold_noise < 1:
        raise ValueError(f"{who}: threshold_noise = {threshold_noise} must lie in (0, 1)")
    linear = steps // 2 if linear_steps is None else int(linear_steps)
    if not 1 <= linear < steps:
        raise ValueError(f"{who}: linear_steps = {linear_steps} must lie in [1, steps − 1] = [1, {steps - 1}]")
    quadratic = steps - linear
    slope = threshold_noise / linear
    curvature = (1 - threshold_noise - slope * quadratic) / quadratic ** 2
    progress = [i * slope for i in range(linear)]
    progress += [threshold_noise + slope * (i - linear) + curvature * (i - linear) ** 2
                 for i in range(linear, steps)]
    progress.append(1.0)
    values = [sigma_max * (1 - p) for p in progress]
    for i in range(len(values) - 1):
        if not values[i + 1] < values[i]:
            raise ValueError(f"{who}: threshold_noise = {threshold_noise} with linear_steps = {linear} gives "
                             f"a non-decreasing schedule at step {i}; use a smaller threshold_noise")
    return _finish(values, dtype)


def karras_sigmas(steps, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0, dtype=torch.float32):
    """Karras et al. 2022 (eq. 5): ``σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` then 0."""
    who = "karras_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who, positive_min=True)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish([v ** rho for v in _lerp_grid(hi, lo, steps)], dtype)


def exponential_sigmas(steps, sigma_max=14.614642, sigma_min=0.0291675, dtype=torch.float32):
    """Uniform in log σ from sigma_max to sigma_min, then 0 (k-diffusion ``get_sigmas_exponential``)."""
    who = "exponential_sigmas"
    _check_steps(steps, who)
    sigma_max, sigma_min = _check_bounds(sigma_max, sigma_min, who, positive_min=True)
    return _finish([math.exp(v) for v in _lerp_grid(math.log(sigma_max), math.log(sigma_min), steps)], dtype)


SCHEDULES = {
    "uniform": uniform_sigmas,
    "sd3_shift": shifted_sigmas,
    "flux_shift": flux_sigmas,
    "cosine": cosine_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
}


SCHEDULE_INFO = {
    "uniform": "Uniform in σ; the flow-matching default.",
    "sd3_shift": "SD3 shift (shift=3): more steps at high noise, for SD3/SD3.5-type flow models.",
    "flux_shift": "Flux resolution shift (μ from width/height): more high-noise steps for larger images.",
    "cosine": "Cosine (Nichol & Dhariwal) in flow or VE time: dense at both ends.",
    "linear_quadratic": "Movie Gen: slow linear start (θ = 0.025 over half the steps), then quadratic.",
    "karras": "Karras ρ = 7 for VE/EPS models: dense near σ_min.",
    "exponential": "Uniform in log σ for VE/EPS models.",
}


# -- trajectory-adaptive ------------------------------------------------------------------------------
def _per_sample_rms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).pow(2).mean(1).sqrt()


@dataclass(frozen=True)
class TrajectoryPlan:
    """The result of :func:`trajectory_adaptive_plan`: the new grid, the pilot's model calls, its grid (without
    repeats), its local error and the step density per pilot interval."""
    sigmas: torch.Tensor
    pilot_nfe: int
    pilot_sigmas: list
    local_error: list
    density: list


def trajectory_adaptive_sigmas(model, x, pilot_sigmas, steps, extra_args=None, data_end_sigma=None,
                               order=1, density_floor=0.05, dtype=torch.float32) -> torch.Tensor:
    """The grid of :func:`trajectory_adaptive_plan` alone."""
    return trajectory_adaptive_plan(model, x, pilot_sigmas, steps, extra_args, data_end_sigma, order,
                                    density_floor, dtype).sigmas


def trajectory_adaptive_plan(model, x, pilot_sigmas, steps, extra_args=None, data_end_sigma=None,
                             order=1, density_floor=0.05, dtype=torch.float32) -> TrajectoryPlan:
    """Place ``steps`` steps where a pilot trajectory of ``model`` from ``x`` errs most.

    A pilot Heun solve on ``pilot_sigmas`` (2 NFE per pilot interval) yields per interval j the local
    error of an Euler step, ``e_j = mean_batch RMS(x_Heun − x_Euler) ≈ ½ h_j² ‖x''‖`` (the classic
    embedded-pair estimate, Hairer, Nørsett & Wanner I, §II.4). The error constant ``κ_j = e_j/h_j²`` gives
    the step density per unit σ ``ρ_j ∝ κ_j^{1/(p+1)}`` (``p = order`` of the sampler to be used), which
    equidistributes the local error ``κ h^{p+1}`` over the new steps (de Boor's equidistribution
    principle). ``ρ`` is floored at ``density_floor × its σ-mean`` so flat regions still get steps.
    The new grid inverts the cumulative density at ``steps`` equal increments: it starts at
    ``pilot_sigmas[0]``, ends in 0 and is strictly decreasing. ``pilot_sigmas`` must end in 0; equal consecutive
    pilot σ are dropped (:class:`~.common.SigmaSteps`); an interval
    ending at σ = 0 without ``data_end_sigma`` (no Heun estimate there) takes its neighbour's density.
    The Heun–Euler difference is taken from the two stage derivatives, ``(h/2)(d₂ − d₁)``, in float32 for a
    half-precision latent (float64 for float64): as a difference of two states it would cancel to the
    latent's rounding.
    """
    who = "trajectory_adaptive_sigmas"
    grid = SigmaSteps(pilot_sigmas, who).grid
    validate_latent(x, who)
    _check_steps(steps, who)
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    if grid[-1] != 0:
        raise ValueError(f"{who}: pilot_sigmas must end in 0, got {grid[-1]}")
    if len(grid) < 2:
        raise ValueError(f"{who}: pilot_sigmas has no step (every σ is 0)")
    if not order >= 1:
        raise ValueError(f"{who}: order = {order} must be ≥ 1")
    if not 0 < density_floor <= 1:
        raise ValueError(f"{who}: density_floor = {density_floor} must lie in (0, 1]")
    derivative = ModelDerivative(model, x, pilot_sigmas, extra_args, data_end_sigma)
    errors = []
    for j in range(len(grid) - 1):
        sigma, sigma_next = grid[j], grid[j + 1]
        first = derivative(x, sigma)
        if sigma_next == 0 and derivative.data_end_sigma is None:
            x = rk_step(derivative, x, sigma, sigma_next, EULER, first_derivative=first).x
            errors.append(torch.full((), float("nan"), dtype=torch.float64, device=x.device))
            continue
        result = rk_step(derivative, x, sigma, sigma_next, HEUN, first_derivative=first)
        second = result.evaluations[1].derivative  # at the Euler point (x + h d₁, σ_next)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        difference = (second.to(work) - first.derivative.to(work)) * (0.5 * (sigma_next - sigma))
        x = result.x
        del result
        errors.append(_per_sample_rms(difference).mean().to(torch.float64))
    local_error = torch.stack(errors).tolist()  # one sync after the pilot
    widths = [grid[j] - grid[j + 1] for j in range(len(grid) - 1)]
    density = [(e / (w * w)) ** (1.0 / (order + 1)) if math.isfinite(e) else math.nan
               for e, w in zip(local_error, widths)]
    for j in range(len(density)):  # fill intervals without an estimate from the nearest neighbour
        if not math.isfinite(density[j]):
            finite = [k for k in range(len(density)) if math.isfinite(density[k])]
            density[j] = density[min(finite, key=lambda k: abs(k - j))] if finite else 1.0
    total = sum(r * w for r, w in zip(density, widths))
    mean_density = total / sum(widths)
    if not (math.isfinite(mean_density) and mean_density > 0):
        density = [1.0] * len(widths)
    else:
        density = [max(r, density_floor * mean_density) for r in density]
    cumulative = [0.0]
    for r, w in zip(density, widths):
        cumulative.append(cumulative[-1] + r * w)
    total = cumulative[-1]
    sigmas = [grid[0]]
    j = 0
    for k in range(1, steps):
        level = total * k / steps
        while cumulative[j + 1] < level:
            j += 1
        fraction = (level - cumulative[j]) / (cumulative[j + 1] - cumulative[j])
        sigmas.append(grid[j] - fraction * widths[j])
    sigmas.append(0.0)
    return TrajectoryPlan(sigmas=torch.tensor(sigmas, dtype=torch.float64).to(dtype), pilot_nfe=derivative.nfe,
                          pilot_sigmas=list(grid), local_error=local_error, density=density)
