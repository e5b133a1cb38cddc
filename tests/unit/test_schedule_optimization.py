"""Pilot-optimized schedules: the warp parametrization, Nelder–Mead, and an optimized grid that generalizes from
pilot noise to held-out noise on the exact mixture."""
import random

import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, rms, uniform
from samplers.predictor_corrector import sample_fs_abm
from samplers.reference import pilot_reference
from samplers.schedule_optimization import nelder_mead, optimize_schedule, warp_schedule
from samplers.schedules import karras_sigmas


@pytest.mark.parametrize("base", [uniform(8), karras_sigmas(8, dtype=torch.float64)], ids=["uniform", "karras"])
def test_zero_warp_is_the_base_and_any_warp_keeps_the_ends_and_the_order(base):
    assert torch.allclose(warp_schedule(base, [0.0] * 5), base, rtol=1e-12, atol=0)
    rng = random.Random(0)
    for _ in range(20):
        warped = warp_schedule(base, [rng.uniform(-3, 3) for _ in range(5)])
        assert len(warped) == len(base) and warped[0] == base[0] and warped[-1] == 0
        assert (warped[1:] < warped[:-1]).all()


def test_warp_rejects_a_grid_without_the_zero_end():
    with pytest.raises(ValueError, match="end in 0"):
        warp_schedule(torch.tensor([1.0, 0.5, 0.1]), [0.0])


def test_nelder_mead_finds_the_minimum_of_a_quadratic():
    target = [0.3, -1.2, 2.0]
    point, value, evaluations = nelder_mead(lambda p: sum((a - b) ** 2 for a, b in zip(p, target)), [0.0] * 3,
                                            max_evaluations=400, tolerance=1e-14)
    assert value < 1e-8 and evaluations <= 400
    assert point == pytest.approx(target, abs=1e-3)


def test_optimized_schedule_beats_its_base_on_held_out_noise(problem):
    """fs_abm at 8 steps on the 3-component mixture from a poor base (σ = (1 − t)³, crowded at σ = 0): fitted on
    64 pilot samples (seed 11), measured on 256 held-out samples (seed 12). Measured:
    pilot RMS 7.7e-2 → 1.9e-2; held out RMS 0.36 → 0.092, median per-sample error 2.9e-2 → 1.1e-2."""
    def noise(seed, n):
        return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def endpoint(x):
        return pilot_reference(problem.model, x, 1.0, rtol=1e-9, data_end_sigma=DATA_END_SIGMA)

    pilot_noise, held_out_noise = noise(11, 64), noise(12, 256)
    pilot_end, held_out_end = endpoint(pilot_noise), endpoint(held_out_noise)

    def pilot_error(sigmas):
        return rms(sample_fs_abm(problem.model, pilot_noise, sigmas, disable=True), pilot_end)

    def held_out_errors(sigmas):
        per_sample = (sample_fs_abm(problem.model, held_out_noise, sigmas, disable=True) - held_out_end)
        per_sample = per_sample.pow(2).mean(1)
        return per_sample.mean().sqrt().item(), per_sample.sqrt().median().item()

    base = (1 - torch.linspace(0, 1, 9, dtype=torch.float64)) ** 3
    search = optimize_schedule(pilot_error, base, knots=4, max_evaluations=80)
    optimized = search.sigmas
    assert search.error <= 0.5 * search.base_error and search.evaluations <= 85
    assert search.base_error == pytest.approx(pilot_error(base), rel=1e-9)
    assert pilot_error(optimized) == pytest.approx(search.error, rel=1e-9)
    (base_rms, base_median), (rms_error, median) = held_out_errors(base), held_out_errors(optimized)
    assert rms_error < 0.5 * base_rms and median < 0.5 * base_median, (rms_error, base_rms, median, base_median)


def test_pilot_reference_matches_the_fixed_step_reference(problem):
    end = pilot_reference(problem.model, problem.noise, 1.0, rtol=1e-10, data_end_sigma=DATA_END_SIGMA)
    assert rms(end, problem.reference) < 1e-8


def test_optimizer_options_are_checked():
    with pytest.raises(ValueError, match="knots"):
        optimize_schedule(lambda s: 1.0, uniform(4), knots=0)
    with pytest.raises(ValueError, match="max_evaluations"):
        optimize_schedule(lambda s: 1.0, uniform(4), max_evaluations=0)
