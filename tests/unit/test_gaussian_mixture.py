"""The analytic model against its closed forms (models/gaussian_mixture.py):
``D = Σ w_k [μ_k + (a s_k²/V_k)(x − aμ_k)]``, ``v = (x − D)/σ``, ``∇log p_σ = −Σ w_k (x − aμ_k)/V_k``;
D, v, score and log p are mutually consistent."""
import math

import pytest
import torch

from models.gaussian_mixture import GaussianMixture


@pytest.fixture
def mixture():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 2
    stds = 0.2 + torch.rand(4, 6, generator=generator, dtype=torch.float64)
    return GaussianMixture.create(means, stds, weights=[0.1, 0.2, 0.3, 0.4])


def noisy_points(mixture, sigma, n=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, generator)
    return (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 0.7, 0.99])
def test_velocity_is_x_minus_denoised_over_sigma(mixture, sigma):
    x = noisy_points(mixture, sigma)
    expected = (x - mixture.denoised(x, sigma)) / sigma
    torch.testing.assert_close(mixture.velocity(x, sigma), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 0.7, 0.99])
def test_score_from_denoised_matches_closed_form(mixture, sigma):
    x = noisy_points(mixture, sigma)
    from_denoised = -(x - (1 - sigma) * mixture.denoised(x, sigma)) / sigma ** 2  # Tweedie
    torch.testing.assert_close(mixture.score(x, sigma), from_denoised, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", [0.0, 0.2, 0.6])
def test_score_is_gradient_of_log_prob_by_finite_differences(mixture, sigma):
    x = noisy_points(mixture, sigma, n=4)
    step = 1e-6
    numeric = torch.zeros_like(x)
    for j in range(x.shape[1]):
        offset = torch.zeros_like(x)
        offset[:, j] = step
        numeric[:, j] = (mixture.log_prob(x + offset, sigma) - mixture.log_prob(x - offset, sigma)) / (2 * step)
    torch.testing.assert_close(mixture.score(x, sigma), numeric, rtol=1e-6, atol=1e-6)


def test_log_prob_at_pure_noise_is_standard_normal(mixture):
    x = torch.randn(8, mixture.dim, dtype=torch.float64)
    expected = -0.5 * (x.square().sum(1) + mixture.dim * math.log(2 * math.pi))
    torch.testing.assert_close(mixture.log_prob(x, 1.0), expected)


def test_velocity_is_finite_at_data_end_and_matches_the_limit(mixture):
    x = noisy_points(mixture, 0.0)
    at_zero = mixture.velocity(x, 0.0)
    assert torch.isfinite(at_zero).all()
    torch.testing.assert_close(at_zero, mixture.velocity(x, 1e-7), rtol=1e-5, atol=1e-5)


def test_velocity_transports_the_marginal_continuity_equation(mixture):
    """∂_σ log p_σ = −∇·v − v·∇log p (continuity equation), checked by finite differences in 2 dimensions."""
    small = GaussianMixture.create(mixture.means[:3, :2], mixture.stds[:3, :2], [0.2, 0.3, 0.5])
    x, sigma, h = noisy_points(small, 0.4, n=6), 0.4, 1e-5
    d_sigma = (small.log_prob(x, sigma + h) - small.log_prob(x, sigma - h)) / (2 * h)
    divergence = torch.zeros(x.shape[0], dtype=torch.float64)
    for j in range(2):
        offset = torch.zeros_like(x)
        offset[:, j] = h
        divergence += (small.velocity(x + offset, sigma)[:, j] - small.velocity(x - offset, sigma)[:, j]) / (2 * h)
    transport = (small.velocity(x, sigma) * small.score(x, sigma)).sum(1)
    torch.testing.assert_close(d_sigma, -divergence - transport, rtol=1e-5, atol=1e-5)


def test_exact_samples_have_the_mixture_moments(mixture):
    samples = mixture.sample(200_000, torch.Generator().manual_seed(3))
    weights = mixture.log_weights.exp()
    mean = (weights[:, None] * mixture.means).sum(0)
    torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=0.03)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        GaussianMixture(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2))
    mixture = GaussianMixture.create(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="features per sample"):
        mixture.velocity(torch.zeros(4, 5), 0.5)
