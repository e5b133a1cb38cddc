"""Multistep predictor–corrector (fs_abm, fs_exp_abm, fs_noise_abm, fs_vp_abm): exact weights, measured orders,
the Runge–Kutta warm start, PEC cost, consistency with the plain Adams–Bashforth and Euler samplers, bad input."""
import math
import random

import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, measured_order, uniform
from samplers.multistep import interpolation_weights, polynomial_moments, sample_adams_bashforth
from samplers.predictor_corrector import (decaying_moments, exponential_moments, extrapolation_amplification,
                                         multistep_weights, sample_fs_abm, sample_fs_exp_abm, sample_fs_noise_abm,
                                         sample_fs_vp_abm, sample_multistep_pc, variable_order, vp_time,
                                         warm_start_steps)
from samplers.runge_kutta import sample_fs_euler, sample_rk


def quadrature(f, a, b, n=20000):
    """Composite Simpson (float64)."""
    h = (b - a) / n
    total = f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n))
    return total * h / 3


@pytest.mark.parametrize("h", [1e-3, 0.049, 0.051, 0.1, 0.5, 2.0, 10.0])
def test_exponential_moments_match_quadrature(h):
    for p, moment in enumerate(exponential_moments(h, 5)):
        exact = quadrature(lambda u: math.exp(u - h) * u ** p, 0.0, h)
        assert moment == pytest.approx(exact, rel=1e-8, abs=1e-300), (h, p)


@pytest.mark.parametrize("h", [1e-3, 0.049, 0.051, 0.1, 0.5, 2.0, 10.0])
def test_decaying_moments_match_quadrature(h):
    for p, moment in enumerate(decaying_moments(h, 5)):
        exact = quadrature(lambda s: math.exp(-s) * s ** p, 0.0, h)
        assert moment == pytest.approx(exact, rel=1e-8, abs=1e-300), (h, p)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_noise_weights_integrate_the_velocity_exactly_when_it_is_a_polynomial_in_log_sigma(k):
    """x_{n+1} − x_n = ∫ v dσ: exact for v(σ) = q(log(σ_n/σ)) with deg q < k."""
    rng = random.Random(10 + k)
    sigma, sigma_next = 2.0, 1.1
    node_sigmas = [sigma] + [sigma * math.exp(rng.uniform(0.1, 1.5)) for _ in range(k - 1)]
    decay, weights = multistep_weights("noise", sigma, sigma_next, node_sigmas)
    assert decay == 1.0
    for degree in range(k):
        values = [math.log(sigma / s) ** degree for s in node_sigmas]
        exact = quadrature(lambda t: math.log(sigma / t) ** degree, sigma, sigma_next)
        assert sum(w * v for w, v in zip(weights, values)) == pytest.approx(exact, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.8), (0.3, 0.01), (14.6, 3.1)])
def test_vp_weights_integrate_the_velocity_exactly_when_it_is_a_polynomial_in_vp_time(k, sigma, sigma_next):
    rng = random.Random(20 + k)
    node_sigmas = [sigma] + [sigma * (1 + rng.uniform(0.05, 0.6)) for _ in range(k - 1)]
    decay, weights = multistep_weights("vp", sigma, sigma_next, node_sigmas)
    assert decay == 1.0
    for degree in range(k):
        values = [vp_time(s) ** degree for s in node_sigmas]
        exact = quadrature(lambda t: vp_time(t) ** degree, sigma, sigma_next)
        assert sum(w * v for w, v in zip(weights, values)) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_vp_time_matches_the_variance_preserving_marginals():
    """σ² = exp(β_min t + β_d t²/2) − 1 at the EDM range ends: t(0.002) = ε_s = 1e-3 and t(80) = 1."""
    assert vp_time(0.002) == pytest.approx(1e-3, rel=1e-9)
    assert vp_time(80.0) == pytest.approx(1.0, rel=1e-9)


def test_variable_order_lowers_the_order_on_long_steps_only():
    """Uniform steps: AB2, AB3, AB4 amplify by 2, 44/12 and 160/24."""
    history = [1.0, 1.1, 1.2, 1.3]
    for points, amplification in ((2, 2.0), (3, 44 / 12), (4, 160 / 24)):
        _, weights = multistep_weights("velocity", 1.0, 0.9, history[:points])
        assert extrapolation_amplification(weights) == pytest.approx(amplification, rel=1e-12)
    assert variable_order("velocity", 1.0, 0.9, history, 7.0) == 4  # a step like the history's spacing
    long_step = variable_order("velocity", 1.0, 0.2, history, 7.0)
    assert 1 <= long_step < 4
    _, weights = multistep_weights("velocity", 1.0, 0.2, history[:long_step])
    assert extrapolation_amplification(weights) <= 7.0
    assert extrapolation_amplification([0.7]) == 1.0


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_weights_integrate_polynomials_exactly(k):
    """On random nodes, Σ w_m q(u_m) = ∫ K(u) q(u) du for every polynomial q of degree < k (K = 1 or e^{u−h})."""
    rng = random.Random(k)
    nodes = [rng.uniform(-1.5, 0.8) for _ in range(k)]
    h = 0.7
    for moments, kernel in ((polynomial_moments(h, k), lambda u: 1.0),
                            (exponential_moments(h, k), lambda u: math.exp(u - h))):
        weights = interpolation_weights(nodes, moments)
        for degree in range(k):
            exact = quadrature(lambda u: kernel(u) * u ** degree, 0.0, h)
            assert sum(w * u ** degree for w, u in zip(weights, nodes)) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def dense_near_zero(steps):
    """(1 − t)², a VE-like grid dense at low σ (where the exponential integrator's log σ steps stay bounded)."""
    return (1 - torch.linspace(0, 1, steps + 1, dtype=torch.float64)) ** 2


@pytest.mark.parametrize("prediction, order, grid, expected, tolerance", [
    ("velocity", 1, uniform, 2, 0.2), ("velocity", 2, uniform, 3, 0.2), ("velocity", 3, uniform, 4, 0.3),
    ("data", 1, dense_near_zero, 2, 0.2), ("data", 2, dense_near_zero, 3, 0.2), ("data", 3, dense_near_zero, 4, 0.5)])
def test_the_corrector_adds_one_order(problem, prediction, order, grid, expected, tolerance):
    """Measured (32–256 steps): velocity 1.90 / 2.95 / 3.81; data on the (1 − t)² grid
    1.89 / 2.95 / 3.55 (order 3 is still pre-asymptotic there)."""
    def run(model, x, sigmas):
        return sample_multistep_pc(model, x, sigmas, order=order, prediction=prediction,
                                   data_end_sigma=DATA_END_SIGMA, disable=True)

    measured, errors = measured_order(run, problem, [32, 64, 128, 256], grid)
    assert abs(measured - expected) < tolerance, (measured, errors)


@pytest.mark.parametrize("order, corrector, expected, tolerance", [
    (1, False, 1, 0.2), (2, False, 2, 0.2), (3, False, 2, 0.2), (4, False, 2, 0.2), (1, True, 2, 0.2),
    (2, True, 3, 0.2), (3, True, 3, 0.5)])
def test_noise_prediction_orders(problem, order, corrector, expected, tolerance):
    """Global order min(points, 2) without the corrector and min(points + 1, 3) with it: the start from one point
    costs no extra model call, and its first step's local error (O(h²), O(h³) corrected) bounds the order."""
    def run(model, x, sigmas):
        return sample_multistep_pc(model, x, sigmas, order=order, prediction="noise", corrector=corrector,
                                   data_end_sigma=DATA_END_SIGMA, disable=True)

    measured, errors = measured_order(run, problem, [32, 64, 128, 256], dense_near_zero)
    assert abs(measured - expected) < tolerance, (measured, errors)


@pytest.mark.parametrize("order, corrector, expected, tolerance", [
    (1, False, 1, 0.2), (2, False, 2, 0.2), (3, False, 2, 0.3), (1, True, 2, 0.2), (2, True, 3, 0.3),
    (3, True, 3.5, 0.5)])
def test_vp_time_orders(problem, order, corrector, expected, tolerance):
    """Uniform grid, 32–256 steps, velocity end to σ = 0. Order 3 + corrector measures 3.76: its bound of 3 (the
    single O(h³) first step) only dominates at far more steps."""
    def run(model, x, sigmas):
        return sample_multistep_pc(model, x, sigmas, order=order, prediction="vp", corrector=corrector,
                                   data_end_sigma=DATA_END_SIGMA, disable=True)

    measured, errors = measured_order(run, problem, [32, 64, 128, 256], uniform)
    assert abs(measured - expected) < tolerance, (measured, errors)


@pytest.mark.parametrize("prediction", ["velocity", "noise"])
def test_variable_order_and_corrector_rule_keep_the_order_asymptotically(problem, prediction):
    """Once the steps are short the rules cost no order: with them the order-3 predictor + corrector converges as
    fast as without (velocity: uniform grid; noise: (1 − t)² grid)."""
    grid = uniform if prediction == "velocity" else dense_near_zero

    def run_with(**rules):
        def run(model, x, sigmas):
            return sample_multistep_pc(model, x, sigmas, order=3, prediction=prediction,
                                       data_end_sigma=DATA_END_SIGMA, disable=True, **rules)
        return measured_order(run, problem, [64, 128, 256], grid)

    fixed, _ = run_with()
    measured, errors = run_with(max_amplification=5.0, corrector_max_log_step=0.5)
    assert measured > 3.0 and abs(measured - fixed) < 0.1, (measured, fixed, errors)


def test_fs_vp_abm_defaults(problem):
    ours = sample_fs_vp_abm(problem.model, problem.noise, uniform(12), data_end_sigma=DATA_END_SIGMA, disable=True)
    explicit = sample_multistep_pc(problem.model, problem.noise, uniform(12), order=3, prediction="vp",
                                   max_amplification=4.0, corrector_max_log_step=1.0, data_end_sigma=DATA_END_SIGMA,
                                   disable=True)
    assert torch.equal(ours, explicit)


def test_fs_noise_abm_defaults(problem):
    sigmas = dense_near_zero(12)
    ours = sample_fs_noise_abm(problem.model, problem.noise, sigmas, data_end_sigma=DATA_END_SIGMA, disable=True)
    explicit = sample_multistep_pc(problem.model, problem.noise, sigmas, order=3, prediction="noise",
                                   corrector_max_log_step=0.5, data_end_sigma=DATA_END_SIGMA, disable=True)
    assert torch.equal(ours, explicit)


@pytest.mark.parametrize("prediction", ["noise", "vp"])
def test_the_first_step_keeps_its_corrector_at_any_length(problem, prediction):
    """A run that starts mid-schedule (the second half of a split run) on steps longer than
    corrector_max_log_step: its first step is corrected (second order: local error O(h³), ratio ≈ 8 per halving)
    as with the corrector on every step; the later long steps are not. corrector_max_log_step = 0.01: every step here
    is long."""
    start = 0.6
    x = sample_rk(problem.model, problem.noise, torch.linspace(1.0, start, 65, dtype=torch.float64),
                  method="dopri5", disable=True)

    def first_step_error(log_step):
        end = start * math.exp(-log_step)
        exact = sample_rk(problem.model, x, torch.linspace(start, end, 257, dtype=torch.float64), method="dopri5",
                          disable=True)
        ours = sample_multistep_pc(problem.model, x, torch.tensor([start, end], dtype=torch.float64), order=3,
                                   prediction=prediction, corrector_max_log_step=0.01, data_end_sigma=DATA_END_SIGMA,
                                   disable=True)
        return float((ours - exact).norm())

    errors = [first_step_error(h) for h in (0.1, 0.05, 0.025)]
    assert errors[0] / errors[1] > 5.5 and errors[1] / errors[2] > 6.5, errors  # first order: ≈ 4
    grid = torch.tensor([start, start * 0.5, start * 0.25], dtype=torch.float64)

    def run(sigmas, **rule):
        return sample_multistep_pc(problem.model, x, sigmas, order=3, prediction=prediction,
                                   data_end_sigma=DATA_END_SIGMA, disable=True, **rule)

    assert torch.equal(run(grid[:2], corrector_max_log_step=0.01), run(grid[:2]))
    assert not torch.allclose(run(grid, corrector_max_log_step=0.01), run(grid), rtol=0, atol=1e-9)


def test_without_corrector_velocity_is_adams_bashforth_with_lower_order_start(problem):
    for order in (2, 3, 4):
        for end in (DATA_END_SIGMA, None):
            ours = sample_multistep_pc(problem.model, problem.noise, uniform(12), order=order, corrector=False,
                                       data_end_sigma=end, disable=True)
            ab = sample_adams_bashforth(problem.model, problem.noise, uniform(12), order=order,
                                        warm_start="lower_order", data_end_sigma=end, disable=True)
            assert torch.allclose(ours, ab, rtol=0, atol=1e-12), (order, end)


@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_without_data_end_sigma_the_last_step_takes_the_denoised_of_the_uncorrected_point(problem, prediction):
    """VE convention (k-diffusion, and the reference of the quality benchmark): x_N = D(x_{N−1}, σ_{N−1})."""
    calls = []

    def recording(x, sigma, **extra_args):
        denoised = problem.model(x, sigma)
        calls.append((x.clone(), denoised))
        return denoised

    out = sample_multistep_pc(recording, problem.noise, dense_near_zero(8), prediction=prediction, disable=True)
    last_x, last_denoised = calls[-1]
    assert torch.equal(out, last_denoised)
    assert torch.allclose(problem.model(last_x, torch.full((16,), float(dense_near_zero(8)[-2]), dtype=torch.float64)),
                          out, rtol=0, atol=1e-14)


@pytest.mark.parametrize("prediction, order, corrector, expected", [
    ("velocity", 3, False, 3), ("velocity", 3, True, 4), ("velocity", 4, False, 4), ("vp", 3, True, 4),
    ("noise", 3, False, 3), ("noise", 3, True, 4), ("noise", 4, False, 4), ("data", 4, False, 4)])
def test_runge_kutta_warm_start_gives_the_full_order_from_the_first_step(problem, prediction, order, corrector,
                                                                        expected):
    """With ``warm_start="runge_kutta"`` the first order − 2 steps are RK steps and the order is the nominal one
    (32–256 steps; measured velocity 2.95 / 4.22 / 4.23, vp 4.11, noise 2.95 / 3.97 / 3.91, data 3.93), where the
    1-NFE start stays at 2 without the corrector and below 4 with it (velocity 2.10 / 3.81 / 1.98, vp 3.76, noise
    2.05 / 3.45 / 2.00, data 1.96)."""
    grid = uniform if prediction in ("velocity", "vp") else dense_near_zero

    def run_with(warm_start):
        def run(model, x, sigmas):
            return sample_multistep_pc(model, x, sigmas, order=order, prediction=prediction, corrector=corrector,
                                       data_end_sigma=DATA_END_SIGMA, disable=True, warm_start=warm_start)
        return measured_order(run, problem, [32, 64, 128, 256], grid)

    measured, errors = run_with("runge_kutta")
    lower, lower_errors = run_with("lower_order")
    assert abs(measured - expected) < 0.35, (measured, errors)
    assert measured > lower + 0.3 and errors[-1] < lower_errors[-1], (measured, lower)


@pytest.mark.parametrize("order, corrector, rk_calls", [(2, True, 0), (3, True, 2), (3, False, 1), (4, True, 6)])
def test_runge_kutta_warm_start_costs_its_extra_stages_only(problem, order, corrector, rk_calls):
    """Steps 0 … order − 3 cost the RK method's extra stages (RK3 with the corrector at order 3: 2; Heun without:
    1; RK4 at order 4: 3 per step, two steps); every other step one model call, none at σ = 0."""
    calls = []

    def counting(x, sigma, **extra_args):
        calls.append(float(sigma[0]))
        return problem.model(x, sigma)

    assert warm_start_steps(order) == {2: 0, 3: 1, 4: 2}[order]
    sample_multistep_pc(counting, problem.noise, uniform(9), order=order, corrector=corrector,
                        warm_start="runge_kutta", disable=True)
    assert len(calls) == 9 + rk_calls and min(calls) > 0


def test_first_order_data_prediction_without_corrector_is_euler(problem):
    ours = sample_multistep_pc(problem.model, problem.noise, uniform(10), order=1, prediction="data",
                               corrector=False, disable=True)
    euler = sample_fs_euler(problem.model, problem.noise, uniform(10), disable=True)
    assert torch.allclose(ours, euler, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", [sample_fs_abm, sample_fs_exp_abm, sample_fs_noise_abm, sample_fs_vp_abm])
def test_one_evaluation_per_step_never_at_zero(problem, sampler):
    calls = []

    def counting(x, sigma, **extra_args):
        calls.append(float(sigma[0]))
        return problem.model(x, sigma)

    seen = []
    sampler(counting, problem.noise, uniform(9), callback=seen.append, disable=True)
    assert len(calls) == 9 and min(calls) > 0
    assert [info["i"] for info in seen] == list(range(9))


def test_bad_options_name_the_sampler(problem):
    with pytest.raises(ValueError, match="fs_abm.*order"):
        sample_fs_abm(problem.model, problem.noise, uniform(4), order=5)
    with pytest.raises(ValueError, match="prediction"):
        sample_multistep_pc(problem.model, problem.noise, uniform(4), prediction="score")
    with pytest.raises(ValueError, match="fs_exp_abm"):
        sample_fs_exp_abm(problem.model, problem.noise, torch.tensor([0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="fs_noise_abm: max_amplification = 0.5"):
        sample_fs_noise_abm(problem.model, problem.noise, uniform(4), max_amplification=0.5)
    with pytest.raises(ValueError, match="fs_abm: corrector_max_log_step = 0.0"):
        sample_multistep_pc(problem.model, problem.noise, uniform(4), corrector_max_log_step=0.0)
    with pytest.raises(ValueError, match="fs_vp_abm: warm_start = 'rk4' is not one of"):
        sample_fs_vp_abm(problem.model, problem.noise, uniform(4), warm_start="rk4")
