"""Adaptive embedded pairs with the PI controller: tolerance reached, NFE accounting, output points,
caps that warn instead of hanging, and the NFE budget mode."""
import math
import warnings

import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, rms, uniform
from samplers.adaptive import sample_adaptive, sample_fs_dopri5, solve_adaptive
from samplers.runge_kutta import sample_rk
from samplers.step_control import PIController


def adaptive(problem, sigmas=None, **options):
    options.setdefault("data_end_sigma", DATA_END_SIGMA)
    options.setdefault("disable", True)
    return solve_adaptive(problem.model, problem.noise, uniform(10) if sigmas is None else sigmas, **options)


def test_the_sampler_returns_the_state_of_the_solve(problem):
    """sample_adaptive (the k-diffusion signature) and fs_dopri5 give exactly the state solve_adaptive returns."""
    out, stats = adaptive(problem, rtol=1e-5, atol=1e-5)
    assert stats.nfe == 1 + 6 * (stats.accepted + stats.rejected) and stats.method == "dopri5"
    same = sample_adaptive(problem.model, problem.noise, uniform(10), data_end_sigma=DATA_END_SIGMA, disable=True,
                           rtol=1e-5, atol=1e-5)
    assert torch.equal(out, same)
    assert torch.equal(out, sample_fs_dopri5(problem.model, problem.noise, uniform(10), data_end_sigma=DATA_END_SIGMA,
                                             disable=True, rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_tolerance_is_reached_and_nfe_reported(problem, method):
    """RMS endpoint error ≤ 10·tol for tol = 1e-4, 1e-6, 1e-8 (rtol = atol = tol); the error and the NFE
    move monotonically with tol; NFE = 1 + (stages − 1)·(accepted + rejected) (FSAL)."""
    errors, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        out, stats = adaptive(problem, method=method, rtol=tol, atol=tol, max_nfe=20000)
        error = rms(out, problem.reference)
        assert error <= 10 * tol, (method, tol, error, stats)
        assert stats.fallback is None and stats.accepted > 0
        per_step = 6 if method == "dopri5" else 3
        assert stats.nfe == 1 + per_step * (stats.accepted + stats.rejected)
        errors.append(error)
        nfes.append(stats.nfe)
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2]


def test_dopri5_is_cheaper_than_bosh3_at_tight_tolerance(problem):
    _, fifth = adaptive(problem, method="dopri5", rtol=1e-8, atol=1e-8, max_nfe=20000)
    _, third = adaptive(problem, method="bosh3", rtol=1e-8, atol=1e-8, max_nfe=20000)
    assert fifth.nfe < third.nfe / 3


def test_callback_fires_once_per_grid_point_with_dense_output(problem):
    """Callbacks at i = 0..N−1 with x from DOPRI5's dense output within 20·tol of the reference trajectory
    (rtol = atol = 1e-7; measured ≤ 9.1e-7, the endpoint error's level), although steps are not forced onto
    the grid."""
    sigmas = uniform(10)
    seen, reference = [], []
    out, stats = adaptive(problem, sigmas, rtol=1e-7, atol=1e-7, callback=seen.append)
    sample_rk(problem.model, problem.noise, uniform(1000), method="rk4", data_end_sigma=DATA_END_SIGMA,
              disable=True, callback=lambda c: reference.append(c["x"]) if c["i"] % 100 == 0 else None)
    assert [c["i"] for c in seen] == list(range(10))
    assert stats.accepted != 10  # the steps did not follow the grid
    for c in seen:
        assert c["sigma"] == sigmas[c["i"]]
        assert rms(c["x"], reference[c["i"]]) < 2e-6, c["i"]
        assert torch.isfinite(c["denoised"]).all()


def test_max_nfe_cap_warns_and_returns_finite_values(problem):
    with pytest.warns(RuntimeWarning, match=r"fs_dopri5: max_nfe = 120 would be exceeded .* Increase max_nfe"):
        out, stats = adaptive(problem, rtol=1e-10, atol=1e-10, max_nfe=120)
    assert torch.isfinite(out).all() and stats.fallback == "max_nfe"
    assert stats.nfe <= 120 and stats.fixed_steps >= 1
    assert rms(out, problem.reference) < 1e-3  # the fixed finish is still a 5th-order solve


def test_impossible_tolerance_is_bounded_and_warned(problem):
    with pytest.warns(RuntimeWarning, match="fs_bosh3"):
        out, stats = adaptive(problem, method="bosh3", rtol=1e-15, atol=1e-15, max_nfe=400)
    assert torch.isfinite(out).all() and stats.nfe <= 400 and stats.fallback is not None


def test_min_step_floor_warns(problem):
    with pytest.warns(RuntimeWarning, match=r"fell below min_step = 0\.05 .* is not reachable here"):
        out, stats = adaptive(problem, rtol=1e-12, atol=1e-12, min_step=0.05)
    assert stats.fallback == "min_step" and torch.isfinite(out).all()


def test_a_failing_model_does_not_hang(problem):
    def broken(x, sigma, **extra_args):
        out = problem.model(x, sigma)
        return out * float("nan") if float(sigma[0]) < 0.5 else out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, stats = solve_adaptive(broken, problem.noise, uniform(10), data_end_sigma=1e-4, max_nfe=300, disable=True)
    assert stats.nfe <= 300 and stats.rejected > 0 and caught


@pytest.mark.parametrize("budget", [8, 20, 50, 100, 300])
def test_nfe_budget_is_never_exceeded(problem, budget):
    out, stats = adaptive(problem, rtol=1e-9, atol=1e-9, nfe_budget=budget)
    assert stats.nfe <= budget and torch.isfinite(out).all()


def test_nfe_budget_buys_accuracy(problem):
    errors = [rms(adaptive(problem, rtol=1e-9, atol=1e-9, nfe_budget=b)[0], problem.reference)
              for b in (20, 60, 200)]
    assert errors[0] > errors[1] > errors[2]


def test_per_sample_norm_is_at_least_as_strict(problem):
    """The per-sample norm (max over the batch) never accepts a step the batch RMS rejects: more NFE, and
    every sample's own RMS error stays within 10·tol."""
    tol = 1e-6
    out_batch, batch = adaptive(problem, rtol=tol, atol=tol)
    out_each, each = adaptive(problem, rtol=tol, atol=tol, error_norm="per_sample")
    assert each.nfe >= batch.nfe
    per_sample = (out_each - problem.reference).pow(2).mean(1).sqrt()
    assert per_sample.max().item() <= 10 * tol


def test_without_data_end_sigma_the_last_interval_is_the_denoised_step(problem):
    seen = []
    out, stats = adaptive(problem, data_end_sigma=None, rtol=1e-6, atol=1e-6, callback=seen.append)
    last = seen[-1]
    torch.testing.assert_close(out, last["denoised"], rtol=1e-10, atol=1e-10)
    assert [c["i"] for c in seen] == list(range(10))


@pytest.mark.parametrize("options, match", [
    (dict(method="rk4"), "fs_rk4: method = 'rk4' has no embedded error estimate"),
    (dict(rtol=-1.0), "rtol = -1.0 must be a finite number ≥ 0"),
    (dict(rtol=0.0, atol=0.0), "rtol and atol cannot both be 0"),
    (dict(error_norm="max"), "error_norm = 'max' is not one of"),
    (dict(nfe_budget=5), "nfe_budget = 5 is below the 7 model evaluations one dopri5 step needs"),
    (dict(min_step=0.0), "min_step = 0.0 must be a positive σ"),
])
def test_bad_options(problem, options, match):
    with pytest.raises(ValueError, match=match):
        adaptive(problem, **options)


# -- the controller on its own -------------------------------------------------------------------------
def test_pi_controller_formula_and_limits():
    controller = PIController(error_order=4, beta1=0.7, beta2=0.4, safety=0.9, factor_min=0.2, factor_max=5)
    assert controller.accepts(0.5) and not controller.accepts(1.5) and not controller.accepts(math.nan)
    first = controller.factor(0.5, accepted=True)
    assert first == pytest.approx(0.9 * 0.5 ** (-0.7 / 5) * 1.0 ** (0.4 / 5))
    second = controller.factor(0.25, accepted=True)
    assert second == pytest.approx(0.9 * 0.25 ** (-0.7 / 5) * 0.5 ** (0.4 / 5))
    assert controller.factor(1e-30, accepted=True) == 5  # clipped to factor_max
    assert controller.factor(4.0, accepted=False) == pytest.approx(0.9 * 4.0 ** (-1 / 5))
    assert controller.factor(1e9, accepted=False) == 0.2  # clipped to factor_min
    assert controller.factor(1.01, accepted=False) <= 1.0  # never grows after a rejection
    assert controller.factor(math.nan, accepted=False) == 0.2
    with pytest.raises(ValueError, match="PIController: safety"):
        PIController(error_order=2, safety=1.5)
