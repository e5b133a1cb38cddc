"""Optimizer-style samplers: each stated integrator equivalence holds step by step, each stated order is
measured."""
import pytest
import torch

from tests.unit.analytic_problems import alternating, measured_order, rms, uniform
from samplers.multistep import adams_bashforth_weights
from samplers import optimizers
from samplers.optimizers import _phi, _phi_scalar, sample_gradient_estimation, sample_heavy_ball, sample_nesterov, sample_secant
from samplers.runge_kutta import sample_rk

STEPS = [16, 32, 64, 128]


def trajectory(sampler, problem, sigmas, **options):
    """States x_k, derivatives d_k = (x_k − D_k)/σ_k from the callback, and the final state."""
    seen = []
    out = sampler(problem.model, problem.noise, sigmas, callback=seen.append, disable=True, **options)
    xs = [c["x"] for c in seen] + [out]
    ds = [(c["x"] - c["denoised"]) / float(c["sigma"]) for c in seen]
    return xs, ds


def assert_ab2_recursion(xs, ds, grid):
    for k in range(1, len(ds)):
        w0, w1 = adams_bashforth_weights([grid[k], grid[k - 1]], grid[k + 1])
        predicted = xs[k] + ds[k] * w0 + ds[k - 1] * w1
        torch.testing.assert_close(xs[k + 1], predicted, rtol=1e-12, atol=1e-12)


def test_heavy_ball_half_is_ab2_on_a_uniform_grid(problem):
    """x_{k+1} = x_k + h[(1+β)d_k − βd_{k−1}] with β = 1/2 satisfies the AB2 recursion to 1e-12 at every step
    after the first (which is Euler)."""
    sigmas = uniform(10)
    xs, ds = trajectory(sample_heavy_ball, problem, sigmas, beta=0.5)
    assert_ab2_recursion(xs, ds, sigmas.tolist())


def test_grid_aware_gradient_estimation_is_variable_step_ab2(problem):
    """γ = 3/2 with grid_aware: γ_k = 1 + h_k/(2h_{k−1}) is variable-step AB2 on a rough grid (1e-12);
    heavy-ball(β = 1/2, grid_aware) is the same method."""
    sigmas = alternating(10)
    xs, ds = trajectory(sample_gradient_estimation, problem, sigmas, gamma=1.5, grid_aware=True)
    assert_ab2_recursion(xs, ds, sigmas.tolist())
    xs_hb, _ = trajectory(sample_heavy_ball, problem, sigmas, beta=0.5, grid_aware=True)
    torch.testing.assert_close(xs_hb[-1], xs[-1], rtol=0, atol=0)


def reference_gradient_estimation(model, x, sigmas, extra_args=None, ge_gamma=2.0):
    """ComfyUI's sample_gradient_estimation (cfg_pp off), written from memory for this test only."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if i == 0:
            x = x + d * dt
        else:
            d_bar = ge_gamma * d + (1 - ge_gamma) * old_d
            x = x + d_bar * dt
        old_d = d
    return x


def test_gradient_estimation_matches_comfyui(problem):
    sigmas = uniform(12) ** 1.5
    ours = sample_gradient_estimation(problem.model, problem.noise, sigmas, disable=True)
    torch.testing.assert_close(ours, reference_gradient_estimation(problem.model, problem.noise, sigmas),
                               rtol=1e-13, atol=1e-13)


def test_polyak_is_the_ema_momentum_recursion(problem):
    sigmas = uniform(8).tolist()
    xs, ds = trajectory(sample_heavy_ball, problem, torch.tensor(sigmas, dtype=torch.float64),
                        beta=0.3, variant="polyak")
    momentum = ds[0]
    for k in range(len(ds)):
        momentum = ds[0] if k == 0 else momentum * 0.3 + ds[k] * 0.7
        torch.testing.assert_close(xs[k + 1], xs[k] + momentum * (sigmas[k + 1] - sigmas[k]),
                                   rtol=1e-12, atol=1e-12)


def run_with(sampler, **options):
    def run(model, x, sigmas):
        return sampler(model, x, sigmas, disable=True, **options)
    return run


@pytest.mark.parametrize("name, sampler, options, order, grid", [
    ("heavy-ball gradient β=1/2", sample_heavy_ball, {}, 2, uniform),
    ("heavy-ball gradient β=0.3", sample_heavy_ball, dict(beta=0.3), 1, uniform),
    ("heavy-ball polyak β=1/2", sample_heavy_ball, dict(variant="polyak"), 1, uniform),
    ("nesterov look-ahead c=1/2", sample_nesterov, {}, 2, uniform),
    ("nesterov look-ahead c=1/2, rough grid", sample_nesterov, {}, 2, alternating),
    ("nesterov look-ahead c=0.3", sample_nesterov, dict(lookahead=0.3), 1, uniform),
    ("nesterov nag", sample_nesterov, dict(variant="nag"), 1, uniform),
    ("grad-est γ=2 (ComfyUI)", sample_gradient_estimation, {}, 1, uniform),
    ("grad-est γ=3/2", sample_gradient_estimation, dict(gamma=1.5), 2, uniform),
    ("grad-est γ=3/2 rough grid", sample_gradient_estimation, dict(gamma=1.5), 1, alternating),
    ("grad-est γ=3/2 grid-aware rough grid", sample_gradient_estimation, dict(gamma=1.5, grid_aware=True), 2,
     alternating),
    ("secant exponential AB2", sample_secant, {}, 2, uniform),
    ("secant exponential AB2 rough grid", sample_secant, {}, 2, alternating),
    ("secant exponential Euler", sample_secant, dict(variant="euler"), 1, uniform),
])
def test_measured_order(problem, name, sampler, options, order, grid):
    """Endpoint RMS error vs the reference at 16–128 steps (32–256 on the rough h, 2h grid). Measured,
    in the order listed: 1.80, 1.05, 0.94, 1.80, 1.90, 1.02, 0.94, 0.94, 1.80, 1.08, 1.89,
    1.88, 1.90, 1.00."""
    steps = STEPS if grid is uniform else [2 * n for n in STEPS]
    measured, errors = measured_order(run_with(sampler, **options), problem, steps, grid)
    assert abs(measured - order) < 0.3, (name, measured, errors)


def test_polyak_error_constant(problem):
    """Order-1 error constant (1+β)/(1−β) × Euler's: 3× at β = 1/2 (checked within 10 % at 128 steps)."""
    sigmas = uniform(128)
    euler = rms(sample_rk(problem.model, problem.noise, sigmas, method="euler", disable=True), problem.reference)
    polyak = rms(sample_heavy_ball(problem.model, problem.noise, sigmas, variant="polyak", disable=True),
                 problem.reference)
    assert polyak / euler == pytest.approx(3.0, rel=0.1)


def test_secant_is_exact_for_a_linear_velocity_field(problem):
    """d = λx (denoiser D = x(1 − σλ)): the secant λ is exact, so every step after the first (Euler) is
    x_{k+1} = e^{λh}x_k, to 1e-12, for both variants."""
    lam = 1.5

    def linear(x, sigma, **extra_args):
        return x * (1 - sigma * lam)[:, None]

    sigmas = alternating(8)
    grid = sigmas.tolist()
    for variant in ("ab2", "euler"):
        seen = []
        out = sample_secant(linear, problem.noise, sigmas, variant=variant, callback=seen.append, disable=True)
        xs = [c["x"] for c in seen] + [out]
        for k in range(1, len(grid) - 1):
            expected = xs[k] * torch.exp(torch.tensor(lam * (grid[k + 1] - grid[k]), dtype=torch.float64))
            torch.testing.assert_close(xs[k + 1], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_phi_functions_match_their_definition(dtype, rtol):
    """φ₁ = (e^z − 1)/z and φ₂ = (e^z − 1 − z)/z² (limits 1 and 1/2 at 0) across 0, both sides of the series
    threshold and the clip range, against float64 evaluations of the definitions (mpmath-free: expm1 is exact
    enough there). float32's bound is the cancellation of φ₁ − 1 just above the threshold."""
    z = torch.tensor([-50.0, -2.0, -0.3, -1.1e-3, -1e-3, -9.9e-4, -1e-7, 0.0, 1e-12, 5e-4, 1e-3, 2e-3, 0.7, 2.0],
                     dtype=dtype)
    phi1, phi2 = _phi(z)
    zd = z.double()
    nonzero = zd != 0
    safe = torch.where(nonzero, zd, torch.ones_like(zd))
    expected1 = torch.where(nonzero, torch.expm1(safe) / safe, torch.ones_like(zd))
    series2 = 0.5 + zd / 6 + zd * zd / 24
    expected2 = torch.where(zd.abs() < 1e-2, series2, (torch.expm1(safe) - safe) / (safe * safe))
    assert phi1.dtype == phi2.dtype == dtype
    torch.testing.assert_close(phi1.double(), expected1, rtol=rtol, atol=0)
    torch.testing.assert_close(phi2.double(), expected2, rtol=rtol, atol=0)


def test_host_phi_matches_the_tensor_phi():
    z = [-50.0, -2.0, -0.3, -1.1e-3, -1e-3, -9.9e-4, -1e-7, 0.0, 1e-12, 5e-4, 1e-3, 2e-3, 0.7, 2.0]
    phi1, phi2 = _phi(torch.tensor(z, dtype=torch.float64))
    host = [_phi_scalar(value) for value in z]
    torch.testing.assert_close(torch.tensor([p for p, _ in host], dtype=torch.float64), phi1, rtol=1e-15, atol=0)
    torch.testing.assert_close(torch.tensor([p for _, p in host], dtype=torch.float64), phi2, rtol=1e-15, atol=0)


@pytest.mark.parametrize("variant", ["ab2", "euler"])
def test_secant_host_and_tensor_coefficients_agree(problem, monkeypatch, variant):
    """On the CPU the per-sample coefficients are computed in Python floats; the tensor path (used on
    accelerators) gives the same sampler output to float64 rounding."""
    sigmas = alternating(12)
    host = sample_secant(problem.model, problem.noise, sigmas, variant=variant, disable=True)
    monkeypatch.setattr(optimizers, "HOST_COEFFICIENT_DEVICES", ())
    tensor = sample_secant(problem.model, problem.noise, sigmas, variant=variant, disable=True)
    torch.testing.assert_close(host, tensor, rtol=1e-12, atol=1e-12)
    assert not torch.equal(host, problem.noise)


def test_secant_without_curvature_is_ab2(problem):
    """With the curvature clipped to 0 (max_curvature_step = 0) the AB2 variant is variable-step AB2
    (= heavy-ball β = 1/2, grid-aware) to 1e-12."""
    sigmas = alternating(10)
    ours = sample_secant(problem.model, problem.noise, sigmas, max_curvature_step=0.0, disable=True)
    ab2 = sample_heavy_ball(problem.model, problem.noise, sigmas, beta=0.5, grid_aware=True, disable=True)
    torch.testing.assert_close(ours, ab2, rtol=1e-12, atol=1e-12)


def test_one_evaluation_per_step(problem):
    for sampler, extra in [(sample_heavy_ball, 0), (sample_gradient_estimation, 0), (sample_secant, 0),
                           (sample_nesterov, 1)]:
        calls = []

        def counting(x, sigma, **extra_args):
            calls.append(float(sigma[0]))
            return problem.model(x, sigma)

        sampler(counting, problem.noise, uniform(9), disable=True)
        assert len(calls) == 9 + extra and min(calls) > 0, sampler.__name__


@pytest.mark.parametrize("call, match", [
    (lambda p: sample_heavy_ball(p.model, p.noise, uniform(3), variant="adam"), "fs_heavy_ball: variant = 'adam'"),
    (lambda p: sample_heavy_ball(p.model, p.noise, uniform(3), variant="polyak", beta=1.0),
     r"fs_heavy_ball: beta = 1.0 must lie in \[0.0, 1.0\)"),
    (lambda p: sample_nesterov(p.model, p.noise, uniform(3), lookahead=1.0), "fs_nesterov: lookahead = 1.0"),
    (lambda p: sample_gradient_estimation(p.model, p.noise, uniform(3), gamma=-1), "fs_grad_est: gamma = -1"),
    (lambda p: sample_secant(p.model, p.noise, uniform(3), max_curvature_step=-1), "fs_secant: max_curvature"),
    (lambda p: sample_secant(p.model, p.noise, uniform(3), variant="bfgs"), "fs_secant: variant = 'bfgs'"),
])
def test_bad_options(problem, call, match):
    with pytest.raises(ValueError, match=match):
        call(problem)
