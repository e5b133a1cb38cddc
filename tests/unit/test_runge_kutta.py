"""Fixed-step Runge–Kutta: measured orders, the σ = 0 end, the callback contract, and bitwise parity of
fs_euler with k-diffusion's sample_euler."""
import pytest
import torch

from tests.unit.analytic_problems import DATA_END_SIGMA, denoiser_of, make_mixture, measured_order, rms, uniform
from samplers.runge_kutta import rk_step, sample_fs_euler, sample_rk
from samplers.tableaux import RK4

STEPS = [16, 32, 64, 128]


def test_reference_is_converged(problem):
    finer = sample_rk(problem.model, problem.noise, uniform(1024), method="dopri5",
                      data_end_sigma=DATA_END_SIGMA, disable=True)
    assert rms(finer, problem.reference) < 1e-11


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("ralston", 2),
                                           ("rk3", 3), ("rk4", 4), ("rk38", 4), ("bosh3", 3)])
def test_measured_order_matches_theory(problem, method, order):
    """Endpoint RMS error against the reference for 16–128 uniform steps on σ ∈ [1, 0] (data_end_sigma =
    1e-8); measured (regression) orders: euler 0.99, heun 1.82, midpoint 1.84,
    ralston 1.84, rk3 2.96, rk4 3.84, rk38 3.87, bosh3 (its 3rd-order weights, fixed steps) 2.82."""
    def run(model, x, sigmas):
        return sample_rk(model, x, sigmas, method=method, data_end_sigma=DATA_END_SIGMA, disable=True)

    measured, errors = measured_order(run, problem, STEPS)
    assert abs(measured - order) < 0.3, (method, measured, errors)


def test_data_end_sigma_keeps_rk4_at_full_order(problem):
    """Without data_end_sigma the last step is the Euler/denoised step (local error O(h²)), which caps RK4
    at global order ≈ 2 (measured 2.04); with it RK4 is 4th order including the last step (3.84)."""
    def run_without(model, x, sigmas):
        return sample_rk(model, x, sigmas, method="rk4", disable=True)

    measured, _ = measured_order(run_without, problem, STEPS)
    assert abs(measured - 2) < 0.3, measured


def test_last_step_without_data_end_sigma_is_the_denoised(problem):
    sigmas = uniform(4)
    x = problem.noise
    seen = []
    out = sample_rk(problem.model, x, sigmas, method="heun", callback=seen.append, disable=True)
    last = seen[-1]
    expected = problem.model(last["x"], sigmas[-2:-1].expand(x.shape[0]))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


class CountingModel:
    def __init__(self, model):
        self.model, self.sigmas = model, []

    def __call__(self, x, sigma, **extra_args):
        assert sigma.shape == (x.shape[0],)
        self.sigmas.append(float(sigma[0]))
        return self.model(x, sigma)


@pytest.mark.parametrize("method, stages", [("euler", 1), ("heun", 2), ("rk4", 4), ("dopri5", 6)])
def test_nfe_and_never_sigma_zero(problem, method, stages):
    counting = CountingModel(problem.model)
    sample_rk(counting, problem.noise, uniform(5), method=method, data_end_sigma=1e-4, disable=True)
    expected = 5 * stages + (1 if method == "dopri5" else 0)  # FSAL: 7 stages, 6 after the first step
    assert len(counting.sigmas) == expected
    if method == "euler":
        assert min(counting.sigmas) > 0  # Euler never evaluates at the end of a step
    else:
        assert min(counting.sigmas) == pytest.approx(1e-4)  # σ = 0 stages run at data_end_sigma
    counting = CountingModel(problem.model)
    sample_rk(counting, problem.noise, uniform(5), method=method, disable=True)
    assert min(counting.sigmas) > 0.1  # no data_end_sigma: the last step reuses the first evaluation


def test_callback_contract(problem):
    sigmas = uniform(6)
    seen = []
    sample_rk(problem.model, problem.noise, sigmas, method="rk4", callback=seen.append, disable=True)
    assert [c["i"] for c in seen] == list(range(6))
    for c in seen:
        assert set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert c["sigma"] == sigmas[c["i"]] and c["sigma_hat"] == sigmas[c["i"]]
        assert c["denoised"].shape == problem.noise.shape


def test_any_latent_shape(problem):
    """A [B, C, H, W] latent gives the same result as the flat [B, N] one (norms/ops never assume 4-D)."""
    flat = sample_rk(problem.model, problem.noise, uniform(8), method="rk4", data_end_sigma=1e-6, disable=True)
    image = sample_rk(problem.model, problem.noise.reshape(16, 1, 2, 3), uniform(8), method="rk4",
                      data_end_sigma=1e-6, disable=True)
    assert image.shape == (16, 1, 2, 3)
    torch.testing.assert_close(image.reshape(16, 6), flat, rtol=0, atol=0)


def test_rk_step_returns_error_and_fsal(problem):
    from samplers.common import ModelDerivative
    from samplers.tableaux import DOPRI5
    derivative = ModelDerivative(problem.model, problem.noise, uniform(2))
    step = rk_step(derivative, problem.noise, 0.9, 0.8, DOPRI5)
    assert step.error is not None and step.error.abs().max() < 1e-4
    assert step.last is not None and len(step.evaluations) == 7
    again = derivative(step.x, 0.8)
    torch.testing.assert_close(again.derivative, step.last.derivative, rtol=0, atol=0)
    assert rk_step(derivative, problem.noise, 0.9, 0.8, RK4).error is None


# -- bitwise parity with k-diffusion -------------------------------------------------------------------
def _append_dims(x, target_dims):
    dims_to_append = target_dims - x.ndim
    return x[(...,) + (None,) * dims_to_append]


def _to_d(x, sigma, denoised):
    return (x - denoised) / _append_dims(sigma, x.ndim)


@torch.no_grad()
def reference_sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.,
                           s_tmin=0., s_tmax=float("inf"), s_noise=1.):
    """k-diffusion's sample_euler (Karras et al. 2022, Alg. 2), written from memory for this test only."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = _to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigma_hat, 'denoised': denoised})
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@pytest.mark.parametrize("x_dtype, sigma_dtype, shape", [
    (torch.float32, torch.float32, (2, 1, 2, 3)),
    (torch.float64, torch.float64, (3, 6)),
    (torch.float64, torch.float32, (2, 3, 2)),
])
def test_fs_euler_is_bitwise_k_diffusion_euler(x_dtype, sigma_dtype, shape):
    mixture = make_mixture(stds=(0.1, 0.2, 0.3))
    model = denoiser_of(mixture)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(x_dtype)
    # a non-uniform, shifted schedule so Δσ is not exactly representable
    t = torch.linspace(1, 0, 11, dtype=torch.float64)
    sigmas = (3 * t / (1 + 2 * t)).to(sigma_dtype)
    ours, theirs = [], []
    out = sample_fs_euler(model, x, sigmas, callback=ours.append, disable=True)
    expected = reference_sample_euler(model, x, sigmas, callback=theirs.append)
    assert out.dtype == expected.dtype
    assert torch.equal(out, expected)
    for a, b in zip(ours, theirs):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["denoised"], b["denoised"]) and a["i"] == b["i"]
        assert torch.equal(a["sigma"], b["sigma"])
