"""Equal consecutive σ (zero-length steps, as ComfyUI's discrete schedules give past the model's timesteps): every
sampler skips them — same result and model calls as on the grid without the repeats, the callback's ``i`` indexes
the given grid and reaches its last step — while an increasing pair stays an error naming the function."""
import pytest
import torch

from samplers import SAMPLERS
from samplers.common import SigmaSteps
from samplers.fitted import fit_solver, refine_end_to_end, sample_fitted
from samplers.reference import reference_trajectory
from samplers.schedule_optimization import optimize_schedule, warp_schedule
from samplers.schedules import trajectory_adaptive_sigmas
from tests.unit.analytic_problems import DATA_END_SIGMA, denoiser_of, make_mixture, uniform

BASE = [1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.0]
REPEATED = {  # the base grid with repeats at different places
    "middle": [1.0, 0.8, 0.55, 0.55, 0.35, 0.2, 0.1, 0.0],
    "start": [1.0, 1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.0],
    "final_zero": [1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.0, 0.0],
    "last_positive": [1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.1, 0.0],
    "several": [1.0, 1.0, 1.0, 0.8, 0.55, 0.55, 0.35, 0.2, 0.2, 0.2, 0.1, 0.0, 0.0],
}


class Counting:
    """The mixture's denoiser, counting its calls and the σ it was called at."""

    def __init__(self, model):
        self.model, self.sigmas = model, []

    def __call__(self, x, sigma, **extra_args):
        self.sigmas.append(float(sigma[0]))
        return self.model(x, sigma)


def noise():
    return torch.randn(3, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def run(name, sigmas, data_end_sigma, callback=None):
    model = Counting(denoiser_of(make_mixture(dim=6)))
    out = SAMPLERS[name](model, noise(), torch.tensor(sigmas, dtype=torch.float64), extra_args={"seed": 7},
                         callback=callback, disable=True, data_end_sigma=data_end_sigma)
    return out, model.sigmas


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("case", list(REPEATED))
@pytest.mark.parametrize("data_end_sigma", [DATA_END_SIGMA, None], ids=["flow", "no-data-end"])
def test_a_grid_with_repeats_gives_the_result_and_the_model_calls_of_the_grid_without_them(name, case,
                                                                                            data_end_sigma):
    """Deterministic and stochastic samplers alike (the stochastic ones with a fixed seed draw no noise on a skipped
    step): the same endpoint, bit for bit, and the same model calls."""
    expected, expected_calls = run(name, BASE, data_end_sigma)
    out, calls = run(name, REPEATED[case], data_end_sigma)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert torch.equal(out, expected), (name, case, float((out - expected).abs().max()))
    assert calls == expected_calls


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("case", ["middle", "start", "final_zero", "several"])
def test_the_callback_reports_every_index_of_the_given_grid_once(name, case):
    """``i`` runs over ``0 … len(sigmas) − 2`` (ComfyUI's progress bar reaches its end); the reports of a run of
    equal σ carry that σ and the state and prediction of the grid without repeats at it; at a repeated final
    σ = 0 the prediction is the state itself."""
    sigmas = REPEATED[case]
    seen, plain = [], []
    out, _ = run(name, sigmas, DATA_END_SIGMA, callback=seen.append)
    run(name, BASE, DATA_END_SIGMA, callback=plain.append)
    assert [payload["i"] for payload in seen] == list(range(len(sigmas) - 1))
    by_sigma = {float(payload["sigma"]): payload for payload in plain}
    for payload in seen:
        sigma = float(payload["sigma"])
        assert sigma == sigmas[payload["i"]] and float(payload["sigma_hat"]) == sigma
        if sigma == 0:
            assert torch.equal(payload["x"], out) and torch.equal(payload["denoised"], out)
        else:
            assert torch.equal(payload["x"], by_sigma[sigma]["x"])
            assert torch.equal(payload["denoised"], by_sigma[sigma]["denoised"])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_grid_of_equal_sigmas_returns_the_latent_without_a_model_call(name):
    seen = []
    x = noise()
    out, calls = run(name, [0.5, 0.5, 0.5], DATA_END_SIGMA, callback=seen.append)
    assert torch.equal(out, x) and calls == []
    assert [payload["i"] for payload in seen] == [0, 1]


def test_sigma_steps_keeps_the_last_of_each_run_and_maps_the_callback_back():
    sigmas = torch.tensor([2.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0])
    reports = []
    steps = SigmaSteps(sigmas, "who", reports.append)
    assert steps.keep == [1, 2, 5, 7] and steps.grid == [2.0, 1.0, 0.5, 0.0] and steps.steps == 3
    assert torch.equal(steps.sigmas, torch.tensor([2.0, 1.0, 0.5, 0.0]))
    x, denoised = torch.ones(1, 2), torch.zeros(1, 2)
    for k in range(steps.steps):
        steps.callback({"x": x, "i": k, "sigma": steps.sigmas[k], "sigma_hat": steps.sigmas[k], "denoised": denoised})
    final = torch.full((1, 2), 3.0)
    assert steps.finish(final) is final
    assert [r["i"] for r in reports] == list(range(7))
    assert [float(r["sigma"]) for r in reports] == [2.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.0]
    assert reports[-1]["x"] is final and reports[-1]["denoised"] is final
    # nothing repeated: the grid and the callback are passed through untouched
    plain = torch.tensor([1.0, 0.5, 0.0])
    steps = SigmaSteps(plain, "who", reports.append)
    assert steps.sigmas is plain and steps.callback == reports.append and not steps.repeats


def test_a_repeated_last_positive_sigma_reports_the_latest_prediction():
    steps = SigmaSteps(torch.tensor([1.0, 0.5, 0.5]), "who", (reports := []).append)
    denoised = torch.zeros(1, 2)
    steps.callback({"x": torch.ones(1, 2), "i": 0, "sigma": steps.sigmas[0], "sigma_hat": steps.sigmas[0],
                    "denoised": denoised})
    final = torch.full((1, 2), 0.5)
    steps.finish(final)
    assert [r["i"] for r in reports] == [0, 1]
    assert reports[1]["x"] is final and reports[1]["denoised"] is denoised


INCREASING = torch.tensor([1.0, 0.5, 0.5, 0.75, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_an_increasing_pair_is_still_an_error_naming_the_sampler(name):
    problem = r"sigmas must be decreasing .*sigmas\[2\] = 0.5 < sigmas\[3\] = 0.75"
    with pytest.raises(ValueError, match=rf"^{name}: {problem}"):
        run(name, INCREASING.tolist(), DATA_END_SIGMA)


def test_an_increasing_pair_is_an_error_in_the_schedule_and_fitting_functions():
    model, x = denoiser_of(make_mixture(dim=6)), noise()
    targets = [x] * 4
    calls = {
        "trajectory_adaptive_sigmas": lambda: trajectory_adaptive_sigmas(model, x, INCREASING, 4),
        "warp_schedule": lambda: warp_schedule(INCREASING, [0.0]),
        "optimize_schedule": lambda: optimize_schedule(lambda grid: 1.0, INCREASING),
        "fit_solver": lambda: fit_solver(model, x, INCREASING, targets),
        "reference_trajectory": lambda: reference_trajectory(model, x, INCREASING),
    }
    for who, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{who}: sigmas must be decreasing"):
            call()


def test_schedule_warps_accept_repeats():
    base = torch.tensor([1.0, 0.6, 0.6, 0.3, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(warp_schedule(base, [0.0, 0.0]), base)
    warped = warp_schedule(base, [0.7, -0.4])
    assert warped.shape == base.shape and warped[0] == 1.0 and warped[-1] == 0.0
    assert bool((warped[1:] <= warped[:-1]).all())
    seen = []
    optimize_schedule(lambda grid: seen.append(grid) or 1.0, base, knots=2, max_evaluations=5)
    assert seen and all(bool((g[1:] <= g[:-1]).all()) for g in seen)


def test_the_fitted_solver_fits_and_samples_a_grid_with_repeats_as_the_grid_without_them():
    model = denoiser_of(make_mixture(dim=6))
    pilot = torch.randn(8, 6, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    plain = uniform(5)
    repeated = torch.cat([plain[:3], plain[2:3], plain[3:], plain[-1:]])  # a middle repeat and a repeated final 0
    plain_targets, _ = reference_trajectory(model, pilot, plain, rtol=1e-8, data_end_sigma=DATA_END_SIGMA)
    targets, _ = reference_trajectory(model, pilot, repeated, rtol=1e-8, data_end_sigma=DATA_END_SIGMA)
    assert len(targets) == len(repeated) - 1
    assert torch.equal(targets[2], targets[1]) and torch.equal(targets[-2], targets[-1])  # equal σ, equal states
    solver = fit_solver(model, pilot, repeated, targets, prediction="velocity", order=2, history=3,
                        data_end_sigma=DATA_END_SIGMA, disable=True).solver
    expected = fit_solver(model, pilot, plain, plain_targets, prediction="velocity", order=2, history=3,
                          data_end_sigma=DATA_END_SIGMA, disable=True).solver
    assert solver.sigmas == expected.sigmas and solver.coefficients == expected.coefficients
    seen = []
    out = sample_fitted(model, pilot, repeated, callback=seen.append, disable=True, solver=solver)
    assert torch.equal(out, sample_fitted(model, pilot, plain, disable=True, solver=expected))
    assert [payload["i"] for payload in seen] == list(range(len(repeated) - 1))
    assert refine_end_to_end(model, pilot, repeated, targets[-1], solver, iterations=1).iterations in (0, 1)
