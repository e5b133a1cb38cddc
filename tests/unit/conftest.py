"""Fixtures of the unit tests (float64, CPU, one thread to stay light)."""
import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, Problem, denoiser_of, make_mixture, sample_rk, uniform

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def problem():
    """3 well-separated components, stds 0.3–0.5, dimension 6, 16 noise samples at σ = 1. Reference:
    fixed-step Dormand–Prince 5 with 512 steps (its own error ≈ 1e-12, checked against 1024 steps in
    test_reference_is_converged)."""
    mixture = make_mixture()
    noise = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = denoiser_of(mixture)
    reference = sample_rk(model, noise, uniform(512), method="dopri5", data_end_sigma=DATA_END_SIGMA,
                          disable=True)
    return Problem(mixture, model, noise, reference)


