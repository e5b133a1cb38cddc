"""Shared plumbing of the samplers: input validation, the model-to-derivative adapter, progress, noise.

The samplers are written against the k-diffusion denoiser convention: ``model(x, sigma * s_in, **extra_args)``
returns the x0-prediction ``D`` and the derivative is ``d = (x − D)/σ`` (the velocity dx/dσ of a flow model,
the noise estimate of a variance-exploding model).

σ = 0 (the data end). ``d`` is 0/0 at σ = 0. :class:`ModelDerivative` therefore never calls the model at
σ = 0: with ``data_end_sigma`` set (flow/CONST models, whose velocity is finite at σ = 0) a stage that
would be evaluated at σ = 0 is evaluated at σ = ``data_end_sigma`` instead, which keeps multi-stage methods
at full order on the last step (the bias is O(data_end_sigma) per unit σ); the model is then given the path's
point at that σ, ``x + data_end_sigma·d`` with d the latest derivative, so a prediction pinned to a fixed value
(the kept region of an inpainting mask) yields that path's velocity rather than 0. With ``data_end_sigma=None``
(VE/EPS/V models, undefined at σ = 0) the samplers take the first-order "denoised" step
``x ← x + (0 − σ)·d = D(x, σ)`` on a step that ends at σ = 0, as k-diffusion does.

Equal consecutive σ (zero-length steps). ComfyUI's discrete schedules repeat σ when the step count exceeds the
model's timesteps (``simple`` at 1500 steps on an SD model). ComfyUI 0.3.75's own samplers
(``comfy/k_diffusion/sampling.py``) still run such a step: one-step methods (``sample_euler``, ``sample_heun``)
call the model and leave x unchanged (``x + d·0``), at the cost of their NFE; the multistep ones divide by the
zero step — ``sample_dpmpp_2m``'s ``r = h_last/h``, ``sample_lms``'s Lagrange weights, ``sample_deis`` — and
return NaN, and ``sample_ipndm`` (uniform-step weights) changes its result; a repeated final σ = 0 makes even
``sample_euler`` return NaN (``d = (x − D)/0``). Here every sampler walks the grid through :class:`SigmaSteps`:
a zero-length step is skipped — x unchanged, no model call, no entry in a multistep history — so a grid with
repeats gives exactly the result of the grid without them, and the callback still fires once per original step
index. An increasing pair stays an error.

Low precision. Latents may be float16/bfloat16. The state keeps the latent's dtype — the model gets x in it and
every sampler returns it — while σ reaches the model in float32 (:func:`sigma_dtype_for`). Coefficients (step
sizes, multistep and φ weights, DDIM factors) are float64 Python numbers, which torch's kernels apply at their
float32 op-math precision; every linear combination of half-precision latents (:func:`half_combination`) is
accumulated in float32 and rounded once to the latent's dtype (a CPU kernel rounds a fused ``add``'s ``alpha``
to the tensor's dtype, and one rounding per term would add up); per-sample norms and dots are float32, the
secant curvature and its φ values float64. A model that returns half-precision predictions cannot serve a stage
at σ = 0 through ``data_end_sigma`` (:class:`ModelDerivative`).
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
    non-finite or negative entry, or increases anywhere. Equal neighbours are allowed: a zero-length step,
    which the samplers skip (:class:`SigmaSteps`).
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
        if values[i + 1] > values[i]:
            raise ValueError(f"{who}: sigmas must be decreasing from noise to data (equal neighbours are allowed, "
                             f"as skipped zero-length steps), but sigmas[{i}] = {values[i]} < sigmas[{i + 1}] = "
                             f"{values[i + 1]}")
    return values


class SigmaSteps:
    """A sampler's σ grid without its zero-length steps, and its callback mapped back to the given grid.

    ``SigmaSteps(sigmas, who, callback)`` validates ``sigmas`` (:func:`validate_sigmas`, errors name ``who``) and
    keeps, of every run of equal σ, the last entry: the one the real step leaves from. Attributes:

    - ``grid``: the kept σ as Python floats (strictly decreasing; one entry when every σ is equal);
    - ``sigmas``: the kept entries of ``sigmas`` (the object itself when nothing repeats, so a grid without
      repeats runs exactly as before), for the callback's ``sigma`` and a noise sampler's arguments;
    - ``callback``: ``callback`` itself when nothing repeats, else a wrapper that turns a report for kept step
      ``k`` into one report for each original index of its run of equal σ (the state and the prediction are
      the same there), so ``i`` is the index into the given grid and ComfyUI's progress bar, which counts
      ``len(sigmas) − 1`` steps, reaches its end;
    - ``steps``: the number of kept (nonzero) steps.

    :meth:`finish` reports the zero-length steps at the grid's last σ (after the last real step) and returns x.
    No model call is made for a zero-length step: there the ``denoised`` reported is x itself at σ = 0 (what
    every model returns at σ = 0), else the latest prediction reported (x when there is none, a grid whose σ are
    all equal).
    """

    def __init__(self, sigmas, who: str, callback=None):
        values = validate_sigmas(sigmas, who)
        count = len(values)
        self.keep = [i for i in range(count) if i == count - 1 or values[i + 1] != values[i]]
        self.grid = [values[i] for i in self.keep]
        self.steps = len(self.grid) - 1
        self.repeats = len(self.keep) < count
        self._original, self._count, self._callback, self._latest = sigmas, count, callback, None
        if not self.repeats:
            self.sigmas, self.callback = sigmas, callback
            return
        if isinstance(sigmas, torch.Tensor):
            self.sigmas = sigmas[self.keep]
        else:
            self.sigmas = [sigmas[i] for i in self.keep]
        self.callback = None if callback is None else self._report

    def _emit(self, payload, first: int, last: int) -> None:
        for i in range(first, last + 1):
            sigma = self._original[i]
            self._callback({**payload, "i": i, "sigma": sigma, "sigma_hat": sigma})

    def _report(self, payload) -> None:
        k = payload["i"]
        self._emit(payload, 0 if k == 0 else self.keep[k - 1] + 1, self.keep[k])
        self._latest = payload["denoised"]

    def finish(self, x):
        """Report the zero-length steps at the last σ (if any) and return ``x``."""
        if self._callback is not None and self.repeats:
            first = 0 if self.steps == 0 else self.keep[-2] + 1
            if first <= self._count - 2:
                denoised = x if self.grid[-1] == 0 or self._latest is None else self._latest
                self._emit({"x": x, "denoised": denoised}, first, self._count - 2)
        return x


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
    bit-identical to it), unless that would promote x to a wider dtype, then x's dtype — except for a
    half-precision x: float32. A bfloat16 σ is off by up to 2⁻⁹ relative (σ = 0.9 by 0.002), which moves a
    network's sinusoidal timestep embedding of 1000·σ by up to 2 rad; k-diffusion's ``sigma * s_in`` would
    round σ to x's dtype, ComfyUI's models accept a float32 σ with a half-precision x."""
    if is_half(x):
        return torch.float32
    if isinstance(sigmas, torch.Tensor) and sigmas.is_floating_point():
        if torch.promote_types(x.dtype, sigmas.dtype) == x.dtype:
            return sigmas.dtype
    return x.dtype


class ModelDerivative:
    """``(x, σ) → (d, D)`` for a k-diffusion style denoiser, counting model evaluations (``nfe``).

    σ is a Python float. A request at σ = 0 is served at σ = ``data_end_sigma`` (see module docstring);
    with ``data_end_sigma=None`` a request at σ = 0 is a programming error of the caller.
    The σ passed to the model is ``σ_tensor * s_in`` with ``σ_tensor`` a 0-d tensor built by a fill
    (no host-to-device copy, no sync) in :func:`sigma_dtype_for` (float32 for a half-precision x); the derivative
    of a half-precision x divides by σ as a Python float, which every kernel applies at float32 precision.

    Half-precision predictions. ``d = (x − D)/σ`` at σ = data_end_sigma (1e-4) needs D to a relative precision far
    below data_end_sigma: a float16/bfloat16 D (8–11 bits) cancels to noise there. Once the model has returned a
    half-precision D, :attr:`data_end_sigma` reads None, so the samplers, which check it before a step that ends
    at σ = 0, take the denoised end step instead. ComfyUI's models return a float32 D for any latent dtype
    (``BaseModel`` casts the network's output to float32), which resolves the substitution.
    """

    def __init__(self, model, x: torch.Tensor, sigmas=None, extra_args=None, data_end_sigma=None):
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.requested_data_end_sigma = data_end_sigma  # as given: not None for a model defined down to σ = 0
        self.half_prediction = False  # whether the model has returned a half-precision D
        self.dtype = sigma_dtype_for(x, sigmas)
        self.half = is_half(x)
        self.s_in = x.new_ones([x.shape[0]], dtype=self.dtype if self.half else x.dtype)
        self.device = x.device
        self.nfe = 0
        self.latest = None  # the latest derivative when data_end_sigma is set (a reference, not a copy)

    @property
    def data_end_sigma(self):
        """The σ a request at σ = 0 is served at, or None (the denoised end step; also after a half-precision D)."""
        return None if self.half_prediction else self.requested_data_end_sigma

    def sigma_tensor(self, sigma: float) -> torch.Tensor:
        return torch.full((), sigma, dtype=self.dtype, device=self.device)

    def denoise(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(D, σ)`` at the σ actually used (data_end_sigma substituted for 0): σ as a 0-d tensor, or as a
        Python float for a half-precision x."""
        if sigma == 0:
            if self.data_end_sigma is None:
                raise RuntimeError("ModelDerivative: the model cannot be evaluated at σ = 0 without "
                                   "data_end_sigma (samplers take the denoised step instead)")
            sigma = self.data_end_sigma
        sigma_t = self.sigma_tensor(sigma)
        denoised = self.model(x, sigma_t * self.s_in, **self.extra_args)
        self.nfe += 1
        if not self.half_prediction and is_half(denoised):
            self.half_prediction = True
        return denoised, (sigma if self.half else sigma_t)

    def __call__(self, x: torch.Tensor, sigma: float) -> Evaluation:
        if sigma == 0 and self.latest is not None and self.latest.shape == x.shape and self.data_end_sigma:
            # x lies at σ = 0; the model is asked at σ = data_end_sigma, so it is given the point of the path there,
            # x + data_end_sigma·d (d: the latest derivative). A prediction that is pinned to a fixed value (the
            # kept region of an inpainting mask, D = the original latent) then gives that path's true velocity,
            # not (x − D)/data_end_sigma of a point that already reached D.
            x = (x + self.data_end_sigma * self.latest).to(x.dtype)
        denoised, sigma_t = self.denoise(x, sigma)
        derivative = (x - denoised) / sigma_t  # 0-d σ: broadcasts, ~3× cheaper than a [B,1,…] view
        if self.requested_data_end_sigma is not None:
            self.latest = derivative
        return Evaluation(derivative, denoised)


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
    """Per-sample Euclidean norm over all non-batch dimensions, shape [B]; float32 for a half-precision
    ``a`` (:func:`working_dtype`), else in ``a``'s dtype."""
    flat = a.reshape(a.shape[0], -1)
    if is_half(a):
        return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32)
    return flat.norm(dim=1)


# -- half precision -------------------------------------------------------------------------------------------
HALF_DTYPES = (torch.float16, torch.bfloat16)


def is_half(t: torch.Tensor) -> bool:
    """Whether ``t`` is a half-precision (float16/bfloat16) tensor."""
    return t.dtype in HALF_DTYPES


def working_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype latent-sized arithmetic on ``t`` accumulates in: float32 for half precision, else t's own."""
    return torch.float32 if is_half(t) else t.dtype


def half_combination(x, x_weight: float, terms, dtype=None):
    """``x_weight·x + Σ w·t`` over ``terms = [(w, t), …]`` (w Python floats, float64), accumulated in float32 and
    rounded once to ``dtype`` (default: the first tensor's dtype). The combination samplers use for
    half-precision latents: each weight enters at float32 precision (a CPU kernel's fused ``add(alpha=w)`` rounds
    w to the tensor's dtype) and the state is rounded once per step, not once per term. ``x=None``: the sum
    alone; terms with w = 0 are skipped."""
    total = None
    if x is not None:
        dtype = x.dtype if dtype is None else dtype
        total = x.float() if x_weight == 1.0 else x.float() * x_weight
    for weight, tensor in terms:
        if weight == 0.0:
            continue
        dtype = tensor.dtype if dtype is None else dtype
        total = tensor.float() * weight if total is None else torch.add(total, tensor, alpha=weight)
    return None if total is None else total.to(dtype)
