"""Shared analytic problems for the sampler unit tests (float64, CPU): mixtures, grids, order regression."""
import math
from dataclasses import dataclass

import torch

from models.gaussian_mixture import GaussianMixture
from samplers.runge_kutta import sample_rk


DATA_END_SIGMA = 1e-8  # float64: rounding of (x − D)/σ and the O(σ) bias of the substitution balance here


def denoiser_of(mixture):
    def model(x, sigma, **extra_args):
        return mixture.denoised(x, sigma)

    return model


@dataclass
class Problem:
    mixture: GaussianMixture
    model: object
    noise: torch.Tensor
    reference: torch.Tensor  # the σ = 0 end of the probability-flow ODE from `noise`


def make_mixture(dim=6, stds=(0.3, 0.4, 0.5), spread=1.5, seed=0, weights=None):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(len(stds), dim, generator=generator, dtype=torch.float64) * spread
    stds = torch.tensor(stds, dtype=torch.float64)[:, None].expand(len(stds), dim)
    return GaussianMixture.create(means, stds, weights)


def uniform(steps, sigma_max=1.0):
    return torch.linspace(sigma_max, 0.0, steps + 1, dtype=torch.float64)


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def alternating(steps, ratio=2.0):
    """A rough grid from 1 to 0 whose step sizes alternate between h and ratio·h."""
    sizes = [1.0 if i % 2 == 0 else ratio for i in range(steps)]
    total = sum(sizes)
    sigmas = [1.0]
    for size in sizes:
        sigmas.append(sigmas[-1] - size / total)
    sigmas[-1] = 0.0
    return torch.tensor(sigmas, dtype=torch.float64)


def measured_order(run, problem, steps_list, grid=uniform):
    """Least-squares slope of −log(error) against log(steps): the empirical convergence order."""
    errors = [rms(run(problem.model, problem.noise, grid(n)), problem.reference) for n in steps_list]
    xs = [math.log(n) for n in steps_list]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return -slope, errors
