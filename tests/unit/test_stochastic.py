"""DDIM, flow SDE and Langevin predictor–corrector.

Marginal tests: sample from noise on an analytic 4-D mixture (n = 4000, components with stds 0.3/0.5/0.7 and
weights 0.5/0.3/0.2) and compare the mean exact log p_0 of the samples with that of n exact samples
(``GaussianMixture.sample``). The standard error of that difference is ≈ 0.05 nats; the tolerance is
|Δ| < 0.2 nats (= 0.05·dim). For scale, scaling every component's spread by 1.1 moves the mean log p by
≈ −0.21·dim/2 = −0.42 nats (checked in test_the_marginal_test_has_power), so the test would catch it. The
component frequencies must also match the weights within 4 binomial standard errors.
"""
import math

import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, denoiser_of, make_mixture, measured_order, uniform
from samplers.runge_kutta import sample_rk
from samplers.schedules import karras_sigmas
from samplers.stochastic import ddim_coefficients, sample_ddim, sample_flow_sde, sample_langevin_pc

N_SAMPLES = 4000
TOLERANCE = 0.2  # nats, 0.05 · dim


@pytest.fixture(scope="module")
def marginal():
    mixture = make_mixture(dim=4, stds=(0.3, 0.5, 0.7), spread=2.0, seed=1, weights=[0.5, 0.3, 0.2])
    noise = torch.randn(N_SAMPLES, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = mixture.sample(N_SAMPLES, generator=torch.Generator().manual_seed(3))
    return mixture, noise, exact


def log_p_shift(mixture, samples, exact):
    return (mixture.log_prob(samples).mean() - mixture.log_prob(exact).mean()).item()


def assert_marginal(mixture, samples, exact, tolerance=TOLERANCE):
    shift = log_p_shift(mixture, samples, exact)
    assert abs(shift) < tolerance, shift
    counts = torch.bincount(mixture.component_of(samples), minlength=3).double()
    weights = mixture.log_weights.exp()
    expected = weights * len(samples)
    standard_error = (len(samples) * weights * (1 - weights)).sqrt()
    assert bool(((counts - expected).abs() < 4 * standard_error).all()), (counts, expected)
    return shift


def test_the_marginal_test_has_power(marginal):
    mixture, _, exact = marginal
    wide = make_mixture(dim=4, stds=(0.33, 0.55, 0.77), spread=2.0, seed=1, weights=[0.5, 0.3, 0.2])
    samples = wide.sample(N_SAMPLES, generator=torch.Generator().manual_seed(7))
    assert log_p_shift(mixture, samples, exact) < -2 * TOLERANCE
    control = mixture.sample(N_SAMPLES, generator=torch.Generator().manual_seed(8))
    assert abs(log_p_shift(mixture, control, exact)) < TOLERANCE  # two exact sample sets agree (≈ 0.10)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_flow_sde_preserves_the_marginal(marginal, eta):
    """η = 1 and η = 1/2, 200 uniform steps (measured Δ: +0.040 and +0.030 nats)."""
    mixture, noise, exact = marginal
    samples = sample_flow_sde(denoiser_of(mixture), noise, uniform(200), eta=eta, extra_args={"seed": 5},
                              disable=True)
    assert_marginal(mixture, samples, exact)


def test_ve_ancestral_preserves_the_marginal(marginal):
    """The same step with a = 1 on a VE model (x_ve = x0 + σε, the mixture seen through t = σ/(1+σ)):
    200 Karras steps from σ = 80 (measured Δ: +0.060; 60 steps: +0.34, first order)."""
    mixture, noise, exact = marginal

    def ve_model(x, sigma, **extra_args):
        return mixture.denoised(x / (1 + sigma)[:, None], sigma / (1 + sigma))

    sigmas = karras_sigmas(200, sigma_max=80.0, sigma_min=0.002, dtype=torch.float64)
    samples = sample_flow_sde(ve_model, noise * 80, sigmas, flow_model=False, extra_args={"seed": 5},
                              disable=True)
    assert_marginal(mixture, samples, exact)


def test_langevin_pc_preserves_the_marginal(marginal):
    """Euler predictor + 1 Langevin corrector (r = 0.16, batch step norm), 100 uniform steps
    (measured Δ: −0.051). The unadjusted Langevin step has an O(r²) bias: at 200 steps Δ ≈ −0.10 for
    r = 0.16 and −0.02 for r = 0.08."""
    mixture, noise, exact = marginal
    samples = sample_langevin_pc(denoiser_of(mixture), noise, uniform(100), step_norm="batch",
                                 extra_args={"seed": 5}, disable=True)
    assert_marginal(mixture, samples, exact)


def test_langevin_pc_on_a_ve_model(marginal):
    mixture, noise, exact = marginal

    def ve_model(x, sigma, **extra_args):
        return mixture.denoised(x / (1 + sigma)[:, None], sigma / (1 + sigma))

    sigmas = karras_sigmas(60, sigma_max=80.0, sigma_min=0.002, dtype=torch.float64)
    samples = sample_langevin_pc(ve_model, noise * 80, sigmas, flow_model=False, step_norm="batch",
                                 extra_args={"seed": 5}, disable=True)
    assert_marginal(mixture, samples, exact)


def test_langevin_step_rule_bias_in_high_dimension():
    """64-D mixture (equal stds 0.5, n = 1000, 100 steps, Heun predictor, r = 0.16). Theory for the
    unadjusted Langevin corrector ε = 2(r‖z‖/‖g‖)²: the stationary variance grows by 1/(1 − ε/2V), shifting the
    mean log p by ≈ −r²·dim/2 = −0.82 nats (batch step norm); a per-sample ε adds ≈ −2 nats independent of the
    dimension (stationary law ∝ p‖g‖² and the ε–z coupling, −1 each). Measured: −1.01 and −3.01.
    Asserted: each within 0.5 nats of theory — so per-sample steps are fine for image latents (2 nats over
    ~10⁵ dimensions) but biased in low dimension (see the 4-D tests, which use the batch norm)."""
    mixture = make_mixture(dim=64, stds=(0.5, 0.5, 0.5), spread=1.0, seed=1)
    noise = torch.randn(1000, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = mixture.sample(1000, generator=torch.Generator().manual_seed(3))
    shifts = {}
    for step_norm in ("batch", "per_sample"):
        samples = sample_langevin_pc(denoiser_of(mixture), noise, uniform(100), predictor="heun",
                                     data_end_sigma=DATA_END_SIGMA, step_norm=step_norm, extra_args={"seed": 5},
                                     disable=True)
        shifts[step_norm] = log_p_shift(mixture, samples, exact)
    assert abs(shifts["batch"] + 0.16 ** 2 * 64 / 2) < 0.5, shifts
    assert abs(shifts["per_sample"] - shifts["batch"] + 2.0) < 0.5, shifts


def test_ddim_is_euler(problem):
    """η = 0 DDIM equals Euler to 1e-12 on flow and VE models, hence order 1 (measured below)."""
    sigmas = uniform(7)
    euler = sample_rk(problem.model, problem.noise, sigmas, method="euler", disable=True)
    torch.testing.assert_close(sample_ddim(problem.model, problem.noise, sigmas, disable=True), euler,
                               rtol=1e-12, atol=1e-12)
    ve_sigmas = karras_sigmas(7, dtype=torch.float64)

    def ve_model(x, sigma, **extra_args):
        return problem.mixture.denoised(x / (1 + sigma)[:, None], sigma / (1 + sigma))

    torch.testing.assert_close(
        sample_ddim(ve_model, problem.noise * 14, ve_sigmas, flow_model=False, disable=True),
        sample_rk(ve_model, problem.noise * 14, ve_sigmas, method="euler", disable=True), rtol=1e-12, atol=1e-12)


def test_ddim_order(problem):
    def run(model, x, sigmas):
        return sample_ddim(model, x, sigmas, disable=True)

    measured, errors = measured_order(run, problem, [16, 32, 64, 128])
    assert abs(measured - 1) < 0.3, (measured, errors)


def test_ddim_eta_noise_level():
    """s(η = 1) is the posterior std of x_σ' given (x_σ, x0): √(σ'²(1 − (σ'a/(σa'))²)); coefficients keep the
    noise variance σ'² − s² + s² = σ'²."""
    sigma, sigma_next = 0.6, 0.4
    c_x, c_d, s = ddim_coefficients(sigma, sigma_next, 1.0, True)
    ratio = sigma_next * (1 - sigma) / (sigma * (1 - sigma_next))
    assert s == pytest.approx(sigma_next * math.sqrt(1 - ratio ** 2))
    assert (c_x * sigma) ** 2 + s ** 2 == pytest.approx(sigma_next ** 2)
    assert c_x * (1 - sigma) + c_d == pytest.approx(1 - sigma_next)  # x0 is carried with weight a'
    assert ddim_coefficients(0.3, 0.0, 1.0, True) == (0.0, 1.0, 0.0)


def test_seeded_noise_is_deterministic(problem):
    sigmas = uniform(6)
    for sampler in (sample_flow_sde, sample_langevin_pc):
        a = sampler(problem.model, problem.noise, sigmas, extra_args={"seed": 11}, disable=True)
        b = sampler(problem.model, problem.noise, sigmas, extra_args={"seed": 11}, disable=True)
        c = sampler(problem.model, problem.noise, sigmas, extra_args={"seed": 12}, disable=True)
        assert torch.equal(a, b) and not torch.equal(a, c)
    calls = []

    def noise_sampler(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.zeros_like(problem.noise)

    out = sample_flow_sde(problem.model, problem.noise, sigmas, noise_sampler=noise_sampler, disable=True)
    assert len(calls) == 5 and torch.isfinite(out).all()


def test_langevin_nfe_and_no_model_call_at_zero(problem):
    calls = []

    def counting(x, sigma, **extra_args):
        calls.append(float(sigma[0]))
        return problem.model(x, sigma)

    sample_langevin_pc(counting, problem.noise, uniform(6), predictor="heun", corrector_steps=2,
                       extra_args={"seed": 1}, disable=True)
    # heun: 2 per step except the last (Euler without data_end_sigma); 2 correctors except at σ = 0
    assert len(calls) == 5 * 2 + 1 + 5 * 2 and min(calls) > 0


@pytest.mark.parametrize("call, match", [
    (lambda p: sample_flow_sde(p.model, p.noise, uniform(3, sigma_max=2.0)), "fs_flow_sde: sigmas\\[0\\] = 2.0 exceeds 1"),
    (lambda p: sample_flow_sde(p.model, p.noise, uniform(3), eta=1.5), "fs_flow_sde: eta = 1.5 must lie in"),
    (lambda p: sample_langevin_pc(p.model, p.noise, uniform(3), snr=0), "fs_langevin_pc: snr = 0.0"),
    (lambda p: sample_langevin_pc(p.model, p.noise, uniform(3), corrector_steps=-1), "corrector_steps = -1"),
    (lambda p: sample_langevin_pc(p.model, p.noise, uniform(3), predictor="rk9"), "fs_langevin_pc: method = 'rk9'"),
    (lambda p: sample_langevin_pc(p.model, p.noise, uniform(3), step_norm="max"), "step_norm = 'max'"),
])
def test_bad_options(problem, call, match):
    with pytest.raises(ValueError, match=match):
        call(problem)
