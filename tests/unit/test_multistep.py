"""Variable-step Adams–Bashforth: exact weights, measured orders on uniform and rough grids, 1 NFE/step."""
import random

import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, alternating, measured_order, uniform
from samplers.multistep import adams_bashforth_weights, sample_adams_bashforth


def test_uniform_weights_are_the_classic_ones():
    h = -0.1
    cases = {2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for k, expected in cases.items():
        past = [0.5 - j * h for j in range(k)]  # σ_n, σ_{n−1} = σ_n + 0.1, …
        weights = adams_bashforth_weights(past, 0.5 + h)
        assert weights == pytest.approx([h * e for e in expected], abs=1e-15)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_variable_weights_integrate_polynomials_exactly(k):
    """On random non-uniform nodes the weights integrate every polynomial of degree < k exactly."""
    rng = random.Random(k)
    past = sorted((rng.uniform(0.3, 0.9) for _ in range(k)))  # σ_n < σ_{n−1} < …
    sigma_next = past[0] - rng.uniform(0.05, 0.2)
    weights = adams_bashforth_weights(past, sigma_next)
    for degree in range(k):
        exact = (sigma_next ** (degree + 1) - past[0] ** (degree + 1)) / (degree + 1)
        assert sum(w * s ** degree for w, s in zip(weights, past)) == pytest.approx(exact, abs=1e-14)


@pytest.mark.parametrize("order, steps", [(2, [16, 32, 64, 128]), (3, [16, 32, 64, 128]),
                                          (4, [64, 128, 256, 512])])
@pytest.mark.parametrize("grid", [uniform, alternating], ids=["uniform", "alternating"])
def test_measured_order(problem, order, steps, grid):
    """Measured (uniform 16–128 steps / alternating h, 2h grid 32–256 steps):
    AB2 1.83 / 1.90, AB3 2.82 / 3.00, AB4 (64–512 steps) 4.12 / 4.15."""
    def run(model, x, sigmas):
        return sample_adams_bashforth(model, x, sigmas, order=order, data_end_sigma=DATA_END_SIGMA, disable=True)

    if grid is alternating and order < 4:
        steps = [2 * n for n in steps]  # with step ratio 2, 16 steps are still pre-asymptotic
    measured, errors = measured_order(run, problem, steps, grid)
    assert abs(measured - order) < 0.3, (order, measured, errors)


@pytest.mark.parametrize("order, warm_cost", [(2, 2), (3, 8), (4, 12)])
def test_one_evaluation_per_step_after_the_warm_start(problem, order, warm_cost):
    calls = []

    def counting(x, sigma, **extra_args):
        calls.append(float(sigma[0]))
        return problem.model(x, sigma)

    steps = 12
    sample_adams_bashforth(counting, problem.noise, uniform(steps), order=order, disable=True)
    assert len(calls) == warm_cost + (steps - (order - 1))
    assert min(calls) > 0


def test_bad_order():
    with pytest.raises(ValueError, match="order = 5 must be 2, 3 or 4"):
        sample_adams_bashforth(None, torch.zeros(1, 2), uniform(3), order=5)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lower_order_warm_start_costs_one_evaluation_per_step_and_keeps_order_two(problem, order):
    """Euler → AB2 → … bootstrap: exactly `steps` NFE; the Euler first step (local error O(h²)) limits the
    global order to 2 for AB3/AB4, AB2 stays second order."""
    calls = []

    def counting(x, sigma, **extra_args):
        calls.append(1)
        return problem.model(x, sigma)

    sample_adams_bashforth(counting, problem.noise, uniform(12), order=order, warm_start="lower_order",
                           disable=True)
    assert len(calls) == 12

    def run(model, x, sigmas):
        return sample_adams_bashforth(model, x, sigmas, order=order, warm_start="lower_order", disable=True)

    measured, errors = measured_order(run, problem, [32, 64, 128, 256], uniform)
    assert measured > 1.7, (order, measured, errors)


def test_unknown_warm_start_is_rejected():
    with pytest.raises(ValueError, match="warm_start = 'rk' must be"):
        sample_adams_bashforth(None, torch.zeros(1, 2), uniform(3), warm_start="rk")
