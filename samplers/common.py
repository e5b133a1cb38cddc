"""Shared plumbing of the samplers: input validation, the model-to-derivative adapter, progress, noise.

The samplers are written against the k-diffusion denoiser convention: ``model(x, sigma * s_in, **extra_args)``
returns the x0-prediction ``D`` and the derivative is ``d = (x − D)/σ`` (the velocity dx/dσ of a flow model,
the noise estimate of a variance-exploding model).

σ = 0 (the data end). ``d`` is 0/0 at σ = 0. :class:`ModelDerivative` therefore never calls the model at
σ = 0: with ``data_end_sigma`` set (flow/CONST models, whose velocity is finite at σ = 0) a stage that
would be evaluated at σ = 0 is evaluated at σ = ``data_end_sigma`` instead, which keeps multi-stage methods
at full order on the last step (the bias is O(data_end_sigma) per unit σ). With ``data_end_sigma=None``
(VE/EPS/V models, undefined at σ = 0) the samplers take the first-order "denoised" step
``x ← x + (0 − σ)·d = D(x, σ)`` on a step that ends at σ = 0, as k-diffusion does.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

try:  # ComfyUI ships tqdm; the numerical core does not need it.
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised only without tqdm
    _tqdm = None


# -- validation --------------------------------------------------------------------------------------
def validate_sigmas(sigmas, who: str) -> list[float]:
    """Check a σ grid and return it as a list of Python floats (the one host sync before a loop).

    Raises ``ValueError`` naming ``who`` when the grid has fewer than 2 entries, is not 1-D, has a
    non-finite or negative entry, or is not strictly decreasing.
    """
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1:
        raise ValueError(f"{who}: sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    values = [float(v) for v in sigmas.tolist()]
    if len(values) < 2:
        raise ValueError(f"{who}: sigmas needs at least 2 entries (a start and an end σ), got {len(values)}")
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"{who}: sigmas[{i}] = {value} is not finite; every σ must be a finite number")
        if value < 0:
            raise ValueError(f"{who}: sigmas[{i}] = {value} is negative; σ must be ≥ 0")
    for i in range(len(values) - 1):
        if not values[i + 1] < values[i]:
            raise ValueError(f"{who}: sigmas must be strictly decreasing, but sigmas[{i}] = {values[i]} "
                             f"and sigmas[{i + 1}] = {values[i + 1]}")
    return values


def validate_latent(x, who: str) -> None:
    """Raise ``ValueError`` naming ``who`` unless ``x`` is a floating tensor with a batch dimension and
    only finite values (one host sync)."""
    if getattr(x, "is_nested", False):
        raise ValueError(f"{who}: nested (multi-part) latents are not supported yet; got {type(x).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: the latent x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{who}: the latent x needs a non-empty leading batch dimension, "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: the latent x must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: the latent x contains NaN or Inf values")


def validate_data_end_sigma(data_end_sigma, who: str):
    if data_end_sigma is None:
        return None
    value = float(data_end_sigma)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{who}: data_end_sigma = {data_end_sigma} must be a positive finite σ "
                         f"(e.g. 1e-4 for flow models) or None (VE/EPS models)")
    return value


def check_choice(value, choices, who: str, name: str):
    if value not in choices:
        raise ValueError(f"{who}: {name} = {value!r} is not one of {sorted(choices)}")
    return value


def check_range(value, low, high, who: str, name: str, low_open=False, high_open=False):
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{who}: {name} = {value} must lie in {lb}{low}, {high}{rb}")
    return value


# -- the model as a derivative function --------------------------------------------------------------
class Evaluation(NamedTuple):
    derivative: torch.Tensor  # d = (x − D)/σ
    denoised: torch.Tensor  # D


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions (k-diffusion's ``append_dims``; one reshape op, a view)."""
    return t.reshape(*t.shape, *(1,) * (ndim - t.ndim))


def sigma_dtype_for(x: torch.Tensor, sigmas) -> torch.dtype:
    """The dtype σ tensors are built in: the σ grid's own dtype (as k-diffusion, which keeps sampling
    bit-identical to it), unless that would promote x to a wider dtype, then x's dtype."""
    if isinstance(sigmas, torch.Tensor) and sigmas.is_floating_point():
        if torch.promote_types(x.dtype, sigmas.dtype) == x.dtype:
            return sigmas.dtype
    return x.dtype


class ModelDerivative:
    """``(x, σ) → (d, D)`` for a k-diffusion style denoiser, counting model evaluations (``nfe``).

    σ is a Python float. A request at σ = 0 is served at σ = ``data_end_sigma`` (see module docstring);
    with ``data_end_sigma=None`` a request at σ = 0 is a programming error of the caller.
    The σ passed to the model is ``σ_tensor * s_in`` with ``σ_tensor`` a 0-d tensor built by a fill
    (no host-to-device copy, no sync) in :func:`sigma_dtype_for`.
    """

    def __init__(self, model, x: torch.Tensor, sigmas=None, extra_args=None, data_end_sigma=None):
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.data_end_sigma = data_end_sigma
        self.s_in = x.new_ones([x.shape[0]])
        self.dtype = sigma_dtype_for(x, sigmas)
        self.device = x.device
        self.nfe = 0

    def sigma_tensor(self, sigma: float) -> torch.Tensor:
        return torch.full((), sigma, dtype=self.dtype, device=self.device)

    def denoise(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(D, σ_tensor)`` at the σ actually used (data_end_sigma substituted for 0)."""
        if sigma == 0:
            if self.data_end_sigma is None:
                raise RuntimeError("ModelDerivative: the model cannot be evaluated at σ = 0 without "
                                   "data_end_sigma (samplers take the denoised step instead)")
            sigma = self.data_end_sigma
        sigma_t = self.sigma_tensor(sigma)
        denoised = self.model(x, sigma_t * self.s_in, **self.extra_args)
        self.nfe += 1
        return denoised, sigma_t

    def __call__(self, x: torch.Tensor, sigma: float) -> Evaluation:
        denoised, sigma_t = self.denoise(x, sigma)
        return Evaluation((x - denoised) / sigma_t, denoised)  # 0-d σ: broadcasts, ~3× cheaper than a [B,1,…] view


# -- progress and callbacks --------------------------------------------------------------------------
def progress_range(n: int, disable=None):
    if _tqdm is None:
        return range(n)
    return _tqdm(range(n), disable=disable)


class Progress:
    """A manual progress bar (tqdm if available) for loops whose iterations are not the grid steps."""

    def __init__(self, total: int, disable=None):
        self.bar = None if _tqdm is None else _tqdm(total=total, disable=disable)

    def update(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def report(callback, x, i, sigma, denoised):
    """Call ``callback`` with the k-diffusion payload ``{"x", "i", "sigma", "sigma_hat", "denoised"}``."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# -- noise ----------------------------------------------------------------------------------------------
def default_noise_sampler(x: torch.Tensor, seed=None) -> Callable:
    """k-diffusion's ``default_noise_sampler``: ``noise_sampler(sigma, sigma_next)`` returns standard normal
    noise shaped like x; seeded (deterministic) when ``seed`` is given, else from torch's global RNG."""
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))
    else:
        generator = None

    def sample(sigma=None, sigma_next=None):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


def resolve_noise_sampler(x, extra_args, noise_sampler):
    if noise_sampler is not None:
        return noise_sampler
    seed = None if extra_args is None else extra_args.get("seed", None)
    return default_noise_sampler(x, seed=seed)


def batch_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm over all non-batch dimensions, shape [B]."""
    return a.reshape(a.shape[0], -1).norm(dim=1)
