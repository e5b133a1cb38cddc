"""Fitted multistep solvers: per-step linear coefficients fitted to a reference trajectory (1 NFE per step).

For a fixed σ grid every 1-NFE-per-step solver that is linear in the model outputs computes its next point in
``span{x_n, D_n, D_{n−1}, …}`` — Adams–Bashforth, DPM-Solver++(2M), UniPC's predictor and iPNDM differ only in
the coefficients. Bespoke Non-Stationary solvers (Shaul et al. 2024, "Bespoke Non-Stationary Solvers for Fast
Sampling of Diffusion and Flow Models", arXiv:2403.01329) learn such coefficients per step for one model and
step count by gradient descent; here they are fitted the cheap way, by linear least squares, one step at a time:

1. a reference solve (tight Dormand–Prince) from pilot noise gives the exact states ``R_n`` at every σ_n of the
   grid (:func:`reference_trajectory`);
2. the solver runs on the same pilot noise. At step n it has its own state ``x_n`` and the model outputs
   ``D_n, D_{n−1}, …``; the base update ``b_n`` (a multistep predictor, ``_History.base_terms``) is corrected
   by the features ``f = [x_n − D_n, D_n, D_n − D_{n−1}, D_{n−1} − D_{n−2}, …]`` with the scalar coefficients
   ``c_n`` that minimize ``‖b_n + Σ_k c_{n,k} f_k − R_{n+1}‖²`` over the whole pilot batch (normalized columns,
   a ridge chosen by two-fold cross-validation, :func:`least_squares_coefficients`);
3. the solver moves to ``x_{n+1} = b_n + Σ_k c_{n,k} f_k`` — its own state, not the reference's, so later steps
   learn to correct what earlier steps leave (no teacher forcing).

The fit costs one reference solve plus ``2N`` batched model calls (the fit and the base run it is compared to);
a :class:`FittedSolver` applies only to the σ grid it was fitted on (checked when sampling). Its coefficients
are a few scalars per step, so a pilot batch of a few latents generalizes to other seeds (tested); a fit whose
pilot endpoint error is not below the base update's falls back to the base (all ``c = 0``).

Equal consecutive σ (zero-length steps, :class:`~.common.SigmaSteps`) are dropped before fitting and sampling: a
solver is fitted on, and samples, the grid without them, so the SIGMAS with repeats it was fitted from sample it
too. Half-precision latents: the updates are accumulated in float32 and rounded once; coefficients, the fit and
the reference's interpolation weights are float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .adaptive import sample_adaptive
from .common import (Evaluation, ModelDerivative, SigmaSteps, check_choice, half_combination, is_half, progress_range,
                     report, validate_data_end_sigma, validate_latent, validate_sigmas)
from .predictor_corrector import PREDICTIONS, _apply, multistep_weights
from .schedule_optimization import optimize_schedule, reference_options

WHO = "fs_fitted (FlowScope · Fitted Solver)"


@dataclass
class FittedSolver:
    """Per-step coefficients of a fitted solver for one σ grid (see the module docstring).

    ``coefficients[n]`` multiplies step n's features ``[x_n − D_n, D_n, D_n − D_{n−1}, …]`` (as many as the
    history allows, at most ``history + 1``), then the guidance directions ``G_n, G_{n−1}, …`` of a guided model
    (at most ``guidance_history``; 0: none, see :func:`fit_solver`); ``denoise_end`` is the σ = 0 end it was
    fitted with (the "take the denoised" last step of VE/EPS models, or a velocity step for flow models); ``info``
    holds the pilot errors of the fit. ``first_call = (a, t)``: the first model call is made at ``(a·x_0, t·σ_0)``
    instead of ``(x_0, σ_0)`` (see :func:`_evaluate`; (1, 1) is the plain call). ``provenance``: strings naming
    the model, guidance and latent shape it was fitted for (written to solver files, :mod:`.solver_file`).
    """
    sigmas: tuple
    prediction: str = "data"
    order: int = 2
    history: int = 3
    denoise_end: bool = True
    coefficients: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    guidance_history: int = 0
    first_call: tuple = (1.0, 1.0)
    provenance: dict = field(default_factory=dict)

    def check_grid(self, grid, who: str = WHO) -> None:
        same = len(grid) == len(self.sigmas) and all(
            math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(grid, self.sigmas))
        if not same:
            shown = ", ".join(f"{s:.4g}" for s in self.sigmas)
            raise ValueError(f"{who}: this solver was fitted for the {len(self.sigmas) - 1}-step grid [{shown}] and "
                             f"cannot sample another one ({len(grid) - 1} steps from σ = {grid[0]:.4g}); give it the "
                             f"SIGMAS it was fitted with, or fit it again")


class _History:
    """Newest-first σ, D and velocity history with the base update and the fit features of one step."""

    def __init__(self, solver: FittedSolver):
        self.prediction, self.order, self.history = solver.prediction, solver.order, solver.history
        self.denoise_end, self.guidance_history = solver.denoise_end, solver.guidance_history
        self.keep = max(self.order, self.history)
        self.sigmas, self.denoised, self.velocities, self.guidance = [], [], [], []

    def snapshot(self) -> tuple:
        """The history as it is now (list copies; the tensors are shared)."""
        return list(self.sigmas), list(self.denoised), list(self.velocities), list(self.guidance)

    def restore(self, snapshot: tuple) -> None:
        self.sigmas, self.denoised, self.velocities, self.guidance = (list(values) for values in snapshot)

    def push(self, sigma: float, evaluation, guidance=None) -> None:
        for values, value, keep in ((self.sigmas, sigma, self.keep), (self.denoised, evaluation.denoised, self.keep),
                                    (self.velocities, evaluation.derivative, self.keep),
                                    (self.guidance, guidance, self.guidance_history)):
            values.insert(0, value)
            del values[keep:]

    def base_terms(self, sigma_next: float) -> tuple[float, list]:
        """The unfitted step as ``(weight of x_n, [(weight, tensor), …])`` (float64 weights): the ``order``-point
        exponential data-prediction multistep predictor in λ = −log σ (``prediction="data"``, DPM-Solver++
        multistep with exact Lagrange weights) or Adams–Bashforth in σ on the velocity (``"velocity"``). The step
        to σ = 0 is ``x ← D_n`` with ``denoise_end`` (VE/EPS models), else Adams–Bashforth on the velocities
        (flow models)."""
        sigma = self.sigmas[0]
        if sigma_next == 0 and self.denoise_end:
            return 0.0, [(1.0, self.denoised[0])]
        points = min(self.order, len(self.sigmas))
        decay, weights = multistep_weights(self.prediction, sigma, sigma_next, self.sigmas[:points])
        outputs = self.velocities if self.prediction == "velocity" or sigma_next == 0 else self.denoised
        return decay, list(zip(weights, outputs[:points]))

    def _denoised_count(self) -> int:
        return min(self.history, len(self.denoised))

    def features(self, x) -> list:
        """``[x_n − D_n, D_n, D_n − D_{n−1}, …]`` (``history + 1`` at most), then the guidance directions
        ``[G_n, G_{n−1}, …]`` (``guidance_history`` at most): the fit's columns."""
        count = self._denoised_count()
        newest = self.denoised[0]
        columns = [x - newest, newest] + [self.denoised[k] - self.denoised[k + 1] for k in range(count - 1)]
        return columns + self.guidance

    def penalty_floors(self, features):
        """The ridge's floors (:func:`least_squares_coefficients`): a guidance direction's coefficient is penalized
        at least at the norm of ``D_n`` — near the end of a pilot every sample has settled in its class and G is
        nearly zero, while a sample between classes has a G as large as D's changes."""
        if not self.guidance:
            return None
        floor = float(self.denoised[0].double().pow(2).sum().sqrt())
        return [0.0] * (len(features) - len(self.guidance)) + [floor] * len(self.guidance)

    def step(self, x, sigma_next: float, coefficients):
        """Base update plus ``Σ_k c_k f_k``, expanded over ``x_n``, the D's and the G's so that no feature tensor is
        built: ``f_0 = x − D_0`` and ``f_{k+2} = D_k − D_{k+1}`` give x weight ``c_0``, D_0 weight
        ``c_1 − c_0 + c_2`` and D_j weight ``c_{j+2} − c_{j+1}``; a G keeps its own (one fused multiply-add per
        term)."""
        x_weight, terms = self.base_terms(sigma_next)
        size = self._denoised_count() + 1
        c, guidance_weights = list(coefficients[:size]) + [0.0, 0.0], coefficients[size:]
        x_weight += c[0]
        denoised_weights = [c[1] - c[0] + c[2]] + [c[j + 2] - c[j + 1] for j in range(1, size - 1)]
        terms += [(w, d) for w, d in zip(denoised_weights, self.denoised) if w != 0.0]
        terms += [(w, g) for w, g in zip(guidance_weights, self.guidance) if w != 0.0]
        return _apply(x, x_weight, *zip(*terms))


RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _two_folds(batch: int, size: int) -> tuple:
    """Index tuples of the two validation halves of ``[B, M]`` pilot data: even/odd samples, or the two halves of
    the latent for a batch of one (the ridge's cross-validation and the end-to-end refinement's guard)."""
    if batch >= 2:
        return (slice(0, None, 2), slice(None)), (slice(1, None, 2), slice(None))
    return (slice(None), slice(None, size // 2)), (slice(None), slice(size // 2, None))


def _ridge_solution(gram, rhs, ridge, floors=None):
    """Ridge solution on normalized columns (float64); a zero feature gets coefficient 0. ``floors``: per column,
    a least norm the penalty measures the coefficient with (``λ·(c_k·max(‖f_k‖, floor_k))²``)."""
    scale = gram.diagonal().sqrt()
    usable = scale > 0
    scale = torch.where(usable, scale, torch.ones_like(scale))
    penalty = torch.ones_like(scale) if floors is None else (torch.maximum(scale, floors) / scale).pow(2)
    normalized = gram / torch.outer(scale, scale) + torch.diag(ridge * penalty + (~usable).double())
    solution = torch.linalg.solve(normalized, rhs / scale) / scale
    return torch.where(usable, solution, torch.zeros_like(solution))


def least_squares_coefficients(features, target, ridges=RIDGES, floors=None) -> list[float]:
    """``argmin_c ‖Σ_k c_k f_k − target‖² + λ·Σ_k (c_k ‖f_k‖)²`` over all entries, float64 normal equations.

    λ is chosen from ``ridges`` by two-fold cross-validation (even/odd batch samples; the two halves of each
    latent for a batch of one): the coefficients are shared by every future sample, so they are regularized
    as much as held-out pilot data asks for. A single ``ridges`` entry skips the validation. ``floors`` (one
    per feature, or None) replace a ‖f_k‖ below them in the penalty: a feature nearly zero on the whole pilot
    otherwise gets a huge coefficient at no cost there, which a sample where it is not small then multiplies.
    """
    batch = target.shape[0]
    rows = torch.stack([f.reshape(batch, -1) for f in features]).double()  # [p, B, M]
    target = target.reshape(batch, -1).double()
    folds = [(rows[(slice(None),) + fold], target[fold]) for fold in _two_folds(*target.shape)]
    moments = [(torch.einsum("pbm,qbm->pq", r, r), torch.einsum("pbm,bm->p", r, t), t.pow(2).sum())
               for r, t in folds]
    gram, rhs = moments[0][0] + moments[1][0], moments[0][1] + moments[1][1]
    if floors is not None:
        floors = torch.as_tensor(floors, dtype=torch.float64, device=gram.device)
    if len(ridges) == 1:
        return _ridge_solution(gram, rhs, ridges[0], floors).tolist()

    def validation_error(ridge):
        total = 0.0
        for fit, check in ((0, 1), (1, 0)):
            c = _ridge_solution(moments[fit][0], moments[fit][1], ridge,
                                None if floors is None else floors / math.sqrt(2))  # a fold: half the entries
            g, b, tt = moments[check]
            total += float(tt - 2 * b @ c + c @ g @ c)
        return total

    best = min(ridges, key=validation_error)
    return _ridge_solution(gram, rhs, best, floors).tolist()


def _latest_guidance(guidance, solver: FittedSolver):
    """The guidance direction of the model call just made, from the ``guidance`` source (None unless the solver
    uses guidance directions)."""
    if not solver.guidance_history:
        return None
    latest = None if guidance is None else guidance()
    if latest is None:
        raise ValueError(f"{WHO}: this solver was fitted on a guided model (CFG ≠ 1) and combines its conditional "
                         f"and unconditional predictions; sample it through a guider with the same cfg")
    return latest


def _evaluate(derivative, x, sigma: float, solver: FittedSolver, first: bool):
    """The model call of a step. The first one is made at ``(a·x, t·σ)`` with ``(a, t) = solver.first_call``: at
    σ_0 = σ_max of a flow model the state is pure noise and an exact denoiser returns the data mean whatever the
    noise, so that call carries (nearly) no information about the sample; a call at a smaller σ on a shrunk
    state does — the refinement moves (a, t) (:func:`refine_end_to_end`). The velocity kept is the state's,
    ``(x − D)/σ``."""
    scale, sigma_scale = solver.first_call
    if not first or (scale == 1.0 and sigma_scale == 1.0):
        return derivative(x, sigma)
    denoised, _ = derivative.denoise(x * scale, sigma * sigma_scale)
    return Evaluation((x - denoised) / sigma, denoised)


def first_call_fits(grid, first_call) -> bool:
    """A first call ``(a, t)`` at a σ above the grid's σ_1 and not above σ_0 (t ≤ 1): the rule of the schedule
    search's candidates (:func:`optimize_fitted`) and of the refinement's steps (:func:`refine_end_to_end`)."""
    first = float(grid[0])
    second = next((float(s) for s in grid[1:] if float(s) < first), 0.0)  # σ_1 of the grid without repeats
    return second < first_call[1] * first <= first


def describe_first_call(first_call) -> str:
    """``(a·x, t·σ_max)`` with a and t to three decimals, for reports and logs."""
    scale, sigma_scale = first_call
    return f"({scale:.3f}·x, {sigma_scale:.3f}·σ_max)"


def _run(model, x, grid, sigmas, extra_args, callback, disable, solver: FittedSolver, targets=None,
         checkpoints=None, guidance=None):
    """Sample with ``solver``'s coefficients, or (``targets`` given) fit them step by step into ``solver``;
    ``checkpoints`` (a list) receives ``(x_n, history snapshot)`` before each step's update. ``guidance``: the
    source of each model call's guidance direction (see :func:`fit_solver`); a fit uses it when it gives one."""
    derivative = ModelDerivative(model, x, sigmas, extra_args, None)
    if targets is not None:
        solver.coefficients = []
    history = None
    for i in progress_range(len(grid) - 1, disable=disable):
        evaluation = _evaluate(derivative, x, grid[i], solver, i == 0)
        if history is None:
            if targets is not None and (guidance is None or guidance() is None):
                solver.guidance_history = 0  # an unguided model: nothing to split
            history = _History(solver)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        history.push(grid[i], evaluation, _latest_guidance(guidance, solver))
        if targets is not None:
            x_weight, terms = history.base_terms(grid[i + 1])
            base = _apply(x, x_weight, *zip(*terms))
            features = history.features(x)
            solver.coefficients.append(least_squares_coefficients(features, targets[i] - base,
                                                                  floors=history.penalty_floors(features)))
        if checkpoints is not None:
            checkpoints.append((x, history.snapshot()))
        x = history.step(x, grid[i + 1], solver.coefficients[i])
    return x


class _StepCache:
    """A run of the fitted solver that remembers, before each step's update, its state and model-output history
    (references to tensors the run made anyway — state, denoised, velocity: ≈ 3 latents per step). A run whose
    coefficients differ from step ``n`` on only can then start at step ``n`` — steps before it, and their model
    calls, are the same — which halves the model calls of the refinement's Jacobian."""

    def __init__(self, model, x, grid, sigmas, extra_args, solver: FittedSolver, guidance=None):
        self.model, self.grid, self.sigmas, self.extra_args, self.solver = model, grid, sigmas, extra_args, solver
        self.guidance, self.checkpoints = guidance, []
        self.endpoint = _run(model, x, grid, sigmas, extra_args, None, True, solver, checkpoints=self.checkpoints,
                             guidance=guidance)

    def run_from(self, start: int, coefficients: list, grid=None):
        """The endpoint of a run with ``coefficients`` (and ``grid``, default the cached run's) that equal the
        cached run's before step ``start`` (a grid may differ from node ``start + 1`` on)."""
        grid = self.grid if grid is None else grid
        state, snapshot = self.checkpoints[start]
        history = _History(self.solver)
        history.restore(snapshot)
        x = history.step(state, grid[start + 1], coefficients[start])
        derivative = ModelDerivative(self.model, x, self.sigmas, self.extra_args, None)
        for i in range(start + 1, len(grid) - 1):
            evaluation = derivative(x, grid[i])
            history.push(grid[i], evaluation, _latest_guidance(self.guidance, self.solver))
            x = history.step(x, grid[i + 1], coefficients[i])
        return x


def sample_fitted(model, x, sigmas, extra_args=None, callback=None, disable=None, solver=None, guidance=None):
    """Sample with a :class:`FittedSolver` on the σ grid it was fitted for (1 NFE per step); a solver fitted with
    guidance directions needs the same ``guidance`` source as the fit (:func:`fit_solver`)."""
    if not isinstance(solver, FittedSolver):
        raise ValueError(f"{WHO}: needs a fitted solver (the FlowScope · Fitted Solver node makes one), "
                         f"got {type(solver).__name__}")
    steps = SigmaSteps(sigmas, WHO, callback)
    validate_latent(x, WHO)
    solver.check_grid(steps.grid)
    x = _run(model, x, steps.grid, steps.sigmas, extra_args, steps.callback, disable, solver, guidance=guidance)
    return steps.finish(x)


def reference_trajectory(model, x, sigmas, extra_args=None, rtol=1e-5, sigma_min=None, data_end_sigma=None,
                         max_nfe=100000, stats=None) -> list:
    """Reference states at ``sigmas[1:]`` from ``x`` at ``sigmas[0]`` (the grid must end in 0): tight
    Dormand–Prince (:func:`~.schedule_optimization.reference_options`) with dense output at the grid points.
    Without ``data_end_sigma`` (VE/EPS models) the solve continues below the grid's last positive σ down to
    ``sigma_min`` before the final denoised step, as the benchmark's reference endpoint does."""
    grid = validate_sigmas(sigmas, "reference_trajectory")
    if grid[-1] != 0:
        raise ValueError(f"reference_trajectory: the grid must end in 0, got {grid[-1]}")
    solve_grid = list(grid)
    if data_end_sigma is None and sigma_min is not None and 0 < float(sigma_min) < grid[-2]:
        solve_grid.insert(-1, float(sigma_min))
    states = {}

    def keep(payload):
        states[payload["i"]] = payload["x"].clone()

    end = sample_adaptive(model, x, torch.tensor(solve_grid, dtype=torch.float64), extra_args=extra_args,
                          callback=keep, disable=True, data_end_sigma=data_end_sigma, stats=stats,
                          **reference_options(rtol, max_nfe))
    return [states[i] for i in range(1, len(grid) - 1)] + [end]


def fit_solver(model, x, sigmas, targets, extra_args=None, prediction="data", order=2, history=3,
               data_end_sigma=None, disable=None, compare_base=True, guidance=None,
               guidance_history=2, first_call=(1.0, 1.0)) -> FittedSolver:
    """Fit a :class:`FittedSolver` for ``sigmas`` (ending in 0) on the pilot latent ``x`` (already scaled to
    σ_0, as a sampler receives it) against ``targets`` = the reference states at ``sigmas[1:]``
    (:func:`reference_trajectory`). ``prediction``/``order``: the base update; ``history``: model outputs
    per feature list (1–8). ``info`` gets ``base_error``, ``error`` (pilot endpoint RMS) and ``fallback``;
    ``compare_base=False`` skips the base run (N model calls; ``info`` then only has ``error``).

    ``guidance``: for a classifier-free-guided model ``D = D_u + w·(D_c − D_u)``, a callable that returns the
    guidance direction ``G = D_c − D_u`` of the model call just made (None when the model is not guided). The
    fit then has the latest ``guidance_history`` G's (0–8) as features too — the conditional and unconditional
    predictions apart, so a step may extrapolate them differently — and the solver needs that source to sample
    (``solver.guidance_history`` is 0 when the source gave none). ``first_call``: the (a, t) of the first model
    call (:func:`_evaluate`)."""
    who = "fit_solver"
    check_choice(prediction, PREDICTIONS, who, "prediction")
    if order not in (1, 2, 3, 4):
        raise ValueError(f"{who}: order = {order!r} must be 1, 2, 3 or 4")
    if history not in range(1, 9):
        raise ValueError(f"{who}: history = {history!r} must be between 1 and 8")
    if guidance_history not in range(0, 9):
        raise ValueError(f"{who}: guidance_history = {guidance_history!r} must be between 0 and 8")
    steps = SigmaSteps(sigmas, who)
    validate_latent(x, who)
    grid = steps.grid
    if grid[-1] != 0:
        raise ValueError(f"{who}: the grid must end in 0 (got {grid[-1]:g}); fit a full schedule")
    if steps.steps == 0:
        raise ValueError(f"{who}: the grid has no step (every σ is 0); fit a full schedule")
    if len(targets) != len(sigmas) - 1 or any(t.shape != x.shape for t in targets):
        raise ValueError(f"{who}: need {len(sigmas) - 1} reference states shaped like x, got {len(targets)}")
    targets = [targets[k - 1] for k in steps.keep[1:]]  # the states at the kept σ (equal σ, equal states)
    sigmas = steps.sigmas
    data_end_sigma = validate_data_end_sigma(data_end_sigma, who)
    solver = FittedSolver(tuple(grid), prediction, order, history, denoise_end=data_end_sigma is None,
                          guidance_history=guidance_history, first_call=tuple(first_call))
    fitted_end = _run(model, x, grid, sigmas, extra_args, None, disable, solver, targets=targets, guidance=guidance)
    error = float((fitted_end - targets[-1]).double().pow(2).mean().sqrt())
    if not compare_base:
        solver.info = {"error": error}
        return solver
    base = FittedSolver(tuple(grid), prediction, order, history, solver.denoise_end,
                        [[0.0] * len(c) for c in solver.coefficients], guidance_history=solver.guidance_history,
                        first_call=solver.first_call)
    base_end = _run(model, x, grid, sigmas, extra_args, None, disable, base, guidance=guidance)
    base_error = float((base_end - targets[-1]).double().pow(2).mean().sqrt())
    fallback = not error < base_error
    if fallback:
        solver.coefficients = base.coefficients
    solver.info = {"base_error": base_error, "error": min(error, base_error), "fallback": fallback}
    return solver


def _endpoint_folds(residual):
    """The two halves (:func:`_two_folds`) of an endpoint residual ``[B, …]`` as float64 rows, one per sample
    (a batch of one, split along the latent: one row each)."""
    flat = residual.double().reshape(residual.shape[0], -1)
    return tuple(flat[fold] for fold in _two_folds(*flat.shape))


TRIMMED_FRACTION = 0.02  # the refinement's guard leaves out this fraction of each half's largest sample errors
START_DAMPING, MAX_DAMPING = 1e-3, 1e8  # the refinement's Levenberg–Marquardt damping: first try, give up past it


def _trimmed_squared_error(rows) -> float:
    """The sum of the per-sample mean squared errors of a fold (:func:`_endpoint_folds`) without the largest
    ⌊:data:`TRIMMED_FRACTION` × samples⌋ of them — a least-trimmed-squares criterion."""
    mean_squares = rows.pow(2).mean(1)
    kept = len(mean_squares) - int(TRIMMED_FRACTION * len(mean_squares))
    return float(mean_squares.sort().values[:kept].sum())


def search_damping(judge, damping: float):
    """The refinement's Levenberg–Marquardt damping search. ``judge(d)`` tries the candidate steps of damping ``d``
    and returns (an outcome that passes the guard, a candidate that passes only the trimmed guard), each or both
    None. From ``damping`` the damping grows tenfold (a shorter, more conservative step) up to :data:`MAX_DAMPING`;
    when no candidate passes, the dampings from :data:`START_DAMPING` up to ``damping`` are tried too: a step
    found at high damping leaves the damping high, and the guard — the error on both pilot halves, not the
    objective the step minimizes — is not monotone in the step length. Returns (outcome, its damping, None), or
    (None, None, fallback) with fallback = (the least damped trimmed-guard candidate, its damping) or None."""
    def ladder(low, stop):
        fallback = None
        while low < stop:
            passed, trimmed = judge(low)
            if passed is not None:
                return passed, low, None
            if fallback is None and trimmed is not None:
                fallback = trimmed, low
            low *= 10
        return None, None, fallback

    outcome, found, fallback = ladder(damping, MAX_DAMPING)
    if outcome is None and damping > START_DAMPING:
        outcome, found, less_damped = ladder(START_DAMPING, damping)
        fallback = None if outcome is not None else less_damped or fallback
    return outcome, found, fallback


def _movable_nodes(grid) -> list:
    """Indices of the grid nodes the end-to-end refinement may move: every positive σ but σ_0 (where the noise
    starts) — the last positive one too (where a VE/EPS model's denoised step or a flow model's last velocity
    step starts; the warp of :func:`optimize_fitted` moves it as well); the final 0 stays."""
    return list(range(1, len(grid) - 1))


def refine_end_to_end(model, x, sigmas, endpoint, solver: FittedSolver, extra_args=None, iterations=4,
                      info=None, move_grid=False, guidance=None, move_first_call=False) -> FittedSolver:
    """Refine all coefficients of a fitted ``solver`` at once against the pilot ``endpoint`` (the reference state
    at σ = sigmas[−1], the last of the fit's targets) — the end-to-end objective Bespoke solvers train on
    (Shaul et al. 2024) — instead of step by step: Levenberg–Marquardt
    (Marquardt 1963) with a forward-difference Jacobian, one pilot run per parameter per iteration, each
    started at the parameter's own step from a cached run (:class:`_StepCache`; the accepted candidate's run is
    the next iteration's cache): ≈ ``P · steps / 2`` model calls per iteration, P = the number of parameters
    (≈ 9 coefficients per step at history 8).

    ``move_grid``: the σ nodes after the first (:func:`_movable_nodes`, in log σ) are parameters too, as the time
    discretization is in Bespoke solvers (Shaul et al. 2023, "Bespoke Solvers for Generative Flow Models"): a
    smooth warp (:func:`optimize_fitted`) cannot place single nodes, and a model's output varies with σ at
    scales far below a step — the sinusoidal timestep embedding of SD-type networks — so that where each node
    samples it matters (measured in docs/benchmark_quality.md). The refined grid is ``solver.sigmas``; a
    candidate whose nodes are not strictly decreasing is rejected like one that does not lower the error.

    Overfitting guard, like the ridge's cross-validation: each step is computed on one half of the pilot
    (even samples, or the first half of the latent for a batch of one) and accepted only if the error falls on
    both halves — otherwise the damping grows (a shorter step) until one does, and when none does, the dampings
    below the current one are tried too (:func:`search_damping`); the refinement stops when no step helps the
    held-out half. When no step passes at any damping, a step whose *least-trimmed* errors fall on both halves
    (each half without its largest :data:`TRIMMED_FRACTION` of per-sample errors, none below 50 samples) is
    taken instead (the least damped one found): a pilot sample near a mode boundary can end in either mode, and
    its error, swinging by far more than the others', otherwise vetoes every step (measured: a 512-sample pilot
    of the analytic mixture at 8 NFE, where the plain guard rejected every step: README, Quality). Since the
    left-out samples may then drift, the refinement returns the iterate with the lowest untrimmed held-out error
    (early stopping on the held-out half; the start if none is lower).

    ``move_first_call``: the first model call's ``log a`` and ``log t`` (:func:`_evaluate`) are parameters too
    (each Jacobian column a whole pilot run; t is projected onto t ≤ 1 and a candidate whose ``t·σ_0`` is not
    above σ_1 is rejected); at each damping the step without them is tried before the coefficients alone.

    ``guidance``: the source of the guidance directions a solver fitted with them needs (:func:`fit_solver`).

    ``info`` gets ``error_before``/``error`` (whole pilot), ``held_out_before``/``held_out``, ``iterations``
    (the steps up to the returned iterate), ``accepted`` (all steps the guard took), ``moved_nodes`` (nodes
    whose σ changed) and ``first_call``."""
    if iterations < 0:
        raise ValueError(f"refine_end_to_end: iterations = {iterations} must be ≥ 0")
    steps = SigmaSteps(sigmas, "refine_end_to_end")
    grid, sigmas = steps.grid, steps.sigmas
    solver.check_grid(grid, "refine_end_to_end")
    lengths = [len(c) for c in solver.coefficients]
    movable = _movable_nodes(grid) if move_grid else []
    coefficient_count = sum(lengths)
    start_logs = [math.log(grid[i]) for i in movable]
    first_call = tuple(solver.first_call)
    first_logs = [math.log(v) for v in first_call] if move_first_call else []

    def moved(values, starts, originals):
        # exp(log v) need not round-trip: an unmoved parameter keeps its exact value
        return [original if log_value == start else math.exp(log_value)
                for log_value, start, original in zip(values, starts, originals)]

    def unpack(vector):
        """(per-step coefficient lists, grid, first call) of a parameter vector."""
        values, start = vector.tolist(), 0
        coefficients = []
        for n in lengths:
            coefficients.append(values[start:start + n])
            start += n
        nodes = list(grid)
        node_values = values[coefficient_count:coefficient_count + len(movable)]
        for index, sigma in zip(movable, moved(node_values, start_logs, [grid[i] for i in movable])):
            nodes[index] = sigma
        first = first_call
        if first_logs:
            first = tuple(moved(values[coefficient_count + len(movable):], first_logs, first_call))
        return coefficients, nodes, first

    def valid(vector):
        """Strictly decreasing nodes; a first call at a σ between σ_1 and σ_0 (t ≤ 1)."""
        _, nodes, first = unpack(vector)
        return all(a > b for a, b in zip(nodes, nodes[1:])) and first_call_fits(nodes, first)

    def cached_run(vector):
        """The run with these parameters, its checkpoints kept: the next iteration's Jacobian starts from it."""
        solver.coefficients, nodes, solver.first_call = unpack(vector)
        return _StepCache(model, x, nodes, sigmas, extra_args, solver, guidance)

    # the first step each parameter acts at: its own for a coefficient, the step landing on it for a node; the
    # first call's (a, t) change every step's input (−1: a whole run)
    step_of = ([n for n, count in enumerate(lengths) for _ in range(count)] + [index - 1 for index in movable]
               + [-1] * len(first_logs))

    def rms(flat):
        return float(flat.pow(2).mean().sqrt())

    def steps(normal, gradient, scale, damping):
        """The damped Gauss–Newton candidates at this damping: all parameters, then — with the first call — all but
        its (a, t), then — with nodes — the coefficients alone (the endpoint is far less linear in the nodes and
        the first call than in the coefficients, so a step that fails because of them does not hold the others
        back to ever shorter steps). The first call's t is projected onto t ≤ 1."""
        sizes = sorted({len(parameters), len(parameters) - len(first_logs), coefficient_count}, reverse=True)
        for size in sizes:
            step = torch.linalg.solve(normal[:size, :size] + damping * scale[:size, :size], gradient[:size])
            candidate = torch.cat([parameters[:size] - step, parameters[size:]])
            if first_logs:  # at σ_max a step up in σ is out of the model's range
                candidate[-1] = candidate[-1].clamp_max(0.0)
            yield candidate

    def plain_errors(fit, held):
        return float(fit.pow(2).sum()), float(held.pow(2).sum())

    def trimmed_errors(fit, held):
        return _trimmed_squared_error(fit), _trimmed_squared_error(held)

    def falls(errors, before):
        return errors[0] < before[0] and errors[1] < before[1]

    def evaluate(candidate):
        """(parameters, run, endpoint residual, its fitting half, its held-out half) of a candidate."""
        run = cached_run(candidate)
        residual = run.endpoint - endpoint
        return (candidate, run, residual) + _endpoint_folds(residual)

    parameters = torch.tensor([v for c in solver.coefficients for v in c] + start_logs + first_logs,
                              dtype=torch.float64)
    cache = cached_run(parameters)
    residual = cache.endpoint - endpoint
    fit_part, held_part = _endpoint_folds(residual)
    start_error, start_held = rms(residual.double()), rms(held_part)
    kept, damping = 0, START_DAMPING
    best = (start_held, 0, parameters, residual)  # the iterate returned: lowest held-out error
    for _ in range(iterations):
        jacobian = torch.empty(fit_part.numel(), len(parameters), dtype=torch.float64)
        nodes = unpack(parameters)[1]
        for k in range(len(parameters)):
            if k < coefficient_count:
                delta = 1e-3 * max(1.0, abs(float(parameters[k])))
            elif k < coefficient_count + len(movable):  # a node, moved up in log σ: well inside its gap above
                index = movable[k - coefficient_count]
                delta = min(1e-3, 0.25 * math.log(nodes[index - 1] / nodes[index]))
            else:  # the first call's log a or log t, moved down (t may sit at its bound 1)
                delta = -1e-3
            shifted = parameters.clone()
            shifted[k] += delta
            moved_coefficients, moved_nodes, moved_first = unpack(shifted)
            if step_of[k] < 0:
                moved_end = _run(model, x, moved_nodes, sigmas, extra_args, None, True,
                                 replace(solver, coefficients=moved_coefficients, first_call=moved_first),
                                 guidance=guidance)
            else:
                moved_end = cache.run_from(step_of[k], moved_coefficients, moved_nodes)
            jacobian[:, k] = ((_endpoint_folds(moved_end - endpoint)[0] - fit_part) / delta).reshape(-1)
        cache = None  # one cache alive at a time: the candidates' runs below keep theirs
        gradient, normal = jacobian.T @ fit_part.reshape(-1), jacobian.T @ jacobian
        # Marquardt's scaling; a parameter the endpoint barely depends on (log a of a first call at σ_max of a flow,
        # whose output does not depend on its input) would otherwise get a rounding-noise step of any size
        scale = torch.diag(normal.diagonal().clamp_min(1e-12 * float(normal.diagonal().max()) + 1e-300))
        current = plain_errors(fit_part, held_part), trimmed_errors(fit_part, held_part)

        def judge(damping):
            """This damping's candidates against the guard: (the outcome of the first that passes it, the first
            whose trimmed errors fall) — each None when there is none."""
            trimmed = None
            for candidate in steps(normal, gradient, scale, damping):
                if not valid(candidate):
                    continue
                outcome = evaluate(candidate)
                if falls(plain_errors(*outcome[3:]), current[0]):
                    return outcome, trimmed
                if trimmed is None and falls(trimmed_errors(*outcome[3:]), current[1]):
                    trimmed = candidate
                outcome = None  # a rejected candidate's run is released before the next one is made
            return None, trimmed

        improved, found, fallback = search_damping(judge, damping)
        if improved is None and fallback is not None:  # only the trimmed sums fall: take that step, run again
            improved, found = evaluate(fallback[0]), fallback[1]
        if improved is None:
            break  # no step helps both halves: the held-out half stopped improving
        parameters, cache, residual, fit_part, held_part = improved
        damping = max(found / 3, 1e-9)
        kept += 1
        held_out = rms(held_part)
        if held_out < best[0]:
            best = (held_out, kept, parameters, residual)
    held_out, chosen, parameters, residual = best
    solver.coefficients, nodes, solver.first_call = unpack(parameters)
    solver.sigmas = tuple(nodes)
    if info is not None:
        info.update(error_before=start_error, error=rms(residual.double()), held_out_before=start_held,
                    held_out=held_out, iterations=chosen, accepted=kept,
                    moved_nodes=sum(a != b for a, b in zip(nodes, grid)), first_call=solver.first_call)
    return solver


class DenseReference:
    """Reference states at many σ (descending, ending in 0 = the endpoint), interpolated in between by the cubic
    Lagrange polynomial in σ through the four nearest nodes: the targets of any grid inside the range without
    a new reference solve (what :func:`optimize_fitted` needs for every candidate grid)."""

    def __init__(self, sigmas, states):
        if len(sigmas) != len(states) or len(sigmas) < 4 or sigmas[-1] != 0:
            raise ValueError("DenseReference: needs ≥ 4 σ nodes ending in 0 and one state per node")
        self.sigmas, self.states = list(sigmas), list(states)

    def state(self, sigma: float):
        nodes = self.sigmas
        j = next((i for i in range(len(nodes) - 1) if nodes[i + 1] < sigma), len(nodes) - 2)  # nodes[j] ≥ σ
        if nodes[j] == sigma:
            return self.states[j]
        first = min(max(j - 1, 0), len(nodes) - 4)
        points = range(first, first + 4)
        weights = [math.prod((sigma - nodes[k]) / (nodes[m] - nodes[k]) for k in points if k != m) for m in points]
        if is_half(self.states[0]):
            return half_combination(None, 1.0, [(w, self.states[m]) for w, m in zip(weights, points)])
        total = None
        for weight, m in zip(weights, points):
            total = self.states[m] * weight if total is None else torch.add(total, self.states[m], alpha=weight)
        return total

    def targets(self, grid) -> list:
        """States at ``grid[1:]`` (the last one, σ = 0, is the endpoint)."""
        return [self.state(s) for s in grid[1:-1]] + [self.states[-1]]


def dense_reference(model, x, sigma_max, sigma_min=None, extra_args=None, rtol=1e-5, data_end_sigma=None,
                    points=256, max_nfe=100000, stats=None) -> DenseReference:
    """One tight reference solve from ``x`` at ``sigma_max`` with its states at ``points`` σ nodes: log-uniform
    down to ``sigma_min`` for VE/EPS models (then the denoised end), log-uniform down to σ_max/1000 merged with
    uniform-in-σ down to 0 for flow models (``sigma_min=None``)."""
    sigma_max = float(sigma_max)
    if sigma_min is not None:
        ratio = float(sigma_min) / sigma_max
        nodes = [sigma_max * ratio ** (i / (points - 1)) for i in range(points)] + [0.0]
    else:
        half = max(points // 2, 4)
        logarithmic = [sigma_max * 1e-3 ** (i / (half - 1)) for i in range(half)]
        linear = [sigma_max * (1 - i / (half - 1)) for i in range(half)]
        nodes = sorted(set(logarithmic + linear), reverse=True)
    states = reference_trajectory(model, x, torch.tensor(nodes, dtype=torch.float64), extra_args, rtol=rtol,
                                  sigma_min=sigma_min, data_end_sigma=data_end_sigma, max_nfe=max_nfe, stats=stats)
    return DenseReference(nodes, [x] + states)


FIRST_CALL_STARTS = (1.0, 0.95, 0.9, 0.8)  # r of the first calls (r·x_0, r·σ_0) :func:`optimize_fitted` tries


def optimize_fitted(model, x, base_sigmas, reference: DenseReference, extra_args=None, prediction="data", order=2,
                    history=3, data_end_sigma=None, knots=6, max_evaluations=60, info=None, guidance=None,
                    guidance_history=2, first_calls=((1.0, 1.0),)):
    """Schedule and coefficients together: :func:`~.schedule_optimization.optimize_schedule` over monotone warps
    of ``base_sigmas`` whose objective is the pilot endpoint error of the solver *fitted on each candidate
    grid* (targets from ``reference``; N model calls per fit). ``first_calls``: the first-call ``(a, t)``
    (:func:`_evaluate`) each candidate grid is fitted with, one fit each, scored by the best (those with
    ``t·σ_0`` not above σ_1 are left out; ``(1, 1)`` always counts). Returns ``(sigmas, solver)``, the solver
    fitted on the best grid with its best first call and the usual comparison to its base update; ``info`` gets
    the warp search's ``base_error``, ``error``, ``evaluations``."""
    def fit(grid, first_call, compare_base=False):
        return fit_solver(model, x, grid, reference.targets(grid.tolist()), extra_args, prediction, order, history,
                          data_end_sigma, disable=True, compare_base=compare_base, guidance=guidance,
                          guidance_history=guidance_history, first_call=first_call)

    def usable(grid):
        return [(1.0, 1.0)] + [tuple(call) for call in first_calls
                               if tuple(call) != (1.0, 1.0) and first_call_fits(grid, call)]

    def best_first_call(grid):
        errors = {call: fit(grid, call).info["error"] for call in usable(grid)}
        finite = {call: error for call, error in errors.items() if math.isfinite(error)}
        return min(finite, key=finite.get) if finite else (1.0, 1.0), min(finite.values(), default=math.inf)

    sigmas = optimize_schedule(lambda grid: best_first_call(grid)[1], base_sigmas, knots=knots,
                               max_evaluations=max_evaluations, info=info)
    calls = usable(sigmas)
    return sigmas, fit(sigmas, calls[0] if len(calls) == 1 else best_first_call(sigmas)[0], compare_base=True)
