"""Exact flow-matching model of a diagonal Gaussian mixture (closed-form denoiser, velocity, score, log p).

Data ``p = Σ_k π_k N(μ_k, diag s_k²)`` pushed along the rectified-flow path ``x_σ = (1−σ)x0 + σε``.
With ``a = 1−σ`` and ``V_k = a²s_k² + σ²`` (component k of ``x_σ`` is ``N(aμ_k, diag V_k)``) every quantity is
known in closed form:
marginal ``p_σ = Σ π_k N(aμ_k, V_k)``, posterior weights ``w_k = softmax(log π_k + log N(x; aμ_k, V_k))``,
denoiser ``D = Σ w_k [μ_k + (a s_k²/V_k)(x − aμ_k)]``,
velocity ``v = dx/dσ = Σ w_k [((σ − a s_k²)/V_k)(x − aμ_k) − μ_k]`` (finite at σ = 0),
score ``∇log p_σ = Σ w_k [−(x − aμ_k)/V_k]``.
With s_k → 0 and π_k = 1/n over a data set this is the exact ("memorizing") optimal denoiser of that set.

Tensors ``x`` have a leading batch dimension; trailing dimensions are flattened to the data dimension.
``sigma`` is a float, a 0-d tensor or a per-sample tensor of shape ``[B]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor  # [K, D]
    stds: torch.Tensor  # [K, D], diagonal standard deviations
    log_weights: torch.Tensor  # [K], normalised log π_k

    def __post_init__(self):
        if self.means.ndim != 2 or self.stds.shape != self.means.shape:
            raise ValueError(f"GaussianMixture: means {tuple(self.means.shape)} and stds "
                             f"{tuple(self.stds.shape)} must both be [K, D]")
        if self.log_weights.shape != self.means.shape[:1]:
            raise ValueError("GaussianMixture: log_weights must have shape [K]")
        if bool((self.stds < 0).any()):
            raise ValueError("GaussianMixture: stds must be non-negative")

    @staticmethod
    def create(means, stds, weights=None) -> "GaussianMixture":
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).expand_as(means).clone()
        if weights is None:
            weights = torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        return GaussianMixture(means, stds, torch.log(weights / weights.sum()))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def to(self, device=None, dtype=None) -> "GaussianMixture":
        return GaussianMixture(self.means.to(device, dtype), self.stds.to(device, dtype),
                               self.log_weights.to(device, dtype))

    # -- internals ---------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, sigma):
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"GaussianMixture: x has {flat.shape[1]} features per sample, "
                             f"the mixture has {self.dim}")
        means, stds, log_w = (t.to(flat.device, flat.dtype) for t in
                              (self.means, self.stds, self.log_weights))
        sigma = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).reshape(-1)
        sigma = sigma.expand(flat.shape[0]).reshape(-1, 1, 1)  # [B, 1, 1]
        a = 1.0 - sigma
        variance = a * a * stds.square()[None] + sigma * sigma  # [B, K, D]
        residual = flat[:, None, :] - a * means[None]  # [B, K, D]
        log_normal = -0.5 * (residual.square() / variance + torch.log(2 * math.pi * variance)).sum(-1)
        return flat, means, stds, log_w, sigma, a, variance, residual, log_normal

    # -- closed forms ------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact log density of the marginal p_σ at x, shape [B]."""
        *_, log_w, _, _, _, _, log_normal = self._prepare(x, sigma)
        return torch.logsumexp(log_w + log_normal, dim=1)

    def posterior_weights(self, x: torch.Tensor, sigma) -> torch.Tensor:
        *_, log_w, _, _, _, _, log_normal = self._prepare(x, sigma)
        return torch.softmax(log_w + log_normal, dim=1)

    def denoised(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat, means, stds, log_w, sigma, a, variance, residual, log_normal = self._prepare(x, sigma)
        weights = torch.softmax(log_w + log_normal, dim=1)[..., None]
        per_component = means[None] + (a * stds.square()[None] / variance) * residual
        return (weights * per_component).sum(1).reshape(x.shape)

    def velocity(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat, means, stds, log_w, sigma, a, variance, residual, log_normal = self._prepare(x, sigma)
        weights = torch.softmax(log_w + log_normal, dim=1)[..., None]
        per_component = ((sigma - a * stds.square()[None]) / variance) * residual - means[None]
        return (weights * per_component).sum(1).reshape(x.shape)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat, means, stds, log_w, sigma, a, variance, residual, log_normal = self._prepare(x, sigma)
        weights = torch.softmax(log_w + log_normal, dim=1)[..., None]
        return (weights * (-residual / variance)).sum(1).reshape(x.shape)

    def component_of(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable mixture component of each (data-end) sample, shape [B]."""
        return self.posterior_weights(x, 0.0).argmax(dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples of the data distribution, shape [n, D]."""
        component = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=self.means.dtype, generator=generator)
        return self.means[component] + self.stds[component] * noise
