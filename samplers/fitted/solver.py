"""The fitted solver itself: per-step coefficients on the model-output history, and how it samples.

For a fixed σ grid every 1-NFE-per-step solver that is linear in the model outputs computes its next point in
``span{x_n, D_n, D_{n−1}, …}`` — Adams–Bashforth, DPM-Solver++(2M), UniPC's predictor and iPNDM differ only in
the coefficients. A :class:`FittedSolver` holds such coefficients for one grid: at step n it moves to
``x_{n+1} = b_n + Σ_k c_{n,k} f_k``, the base update ``b_n`` (a multistep predictor, :meth:`_History.base_terms`)
corrected by the features ``f = [x_n − D_n, D_n, D_n − D_{n−1}, …]`` (and, for a classifier-free-guided model,
the guidance directions ``G_n, G_{n−1}, …``). How the coefficients are found is in :mod:`.fit`.

Equal consecutive σ (zero-length steps, :class:`~..common.SigmaSteps`) are dropped before sampling, as before
fitting. Half-precision latents: the updates are accumulated in float32 and rounded once; coefficients are float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..common import Evaluation, ModelDerivative, SigmaSteps, progress_range, report, validate_latent
from ..predictor_corrector import _apply, multistep_weights

WHO = "fs_fitted (FlowScope · Fitted Solver)"


@dataclass(frozen=True)
class FittedSolver:
    """Per-step coefficients of a fitted solver for one σ grid (see the module docstring).

    ``coefficients[n]`` multiplies step n's features ``[x_n − D_n, D_n, D_n − D_{n−1}, …]`` (as many as the
    history allows, at most ``history + 1``), then the guidance directions ``G_n, G_{n−1}, …`` of a guided model
    (at most ``guidance_history``; 0: none, see :func:`.fit.fit_solver`); ``denoise_end`` is the σ = 0 end it
    was fitted with (the "take the denoised" last step of VE/EPS models, or a velocity step for flow models).
    ``first_call = (a, t)``: the first model call is made at ``(a·x_0, t·σ_0)`` instead of ``(x_0, σ_0)`` (see
    :func:`_evaluate`; (1, 1) is the plain call). ``provenance``: strings naming the model, guidance and latent
    shape it was fitted for and its pilot errors (kept in solver files, :mod:`.storage`). A fit or a refinement
    makes a new solver
    (``dataclasses.replace``); a solver is never changed after it is made.
    """
    sigmas: tuple
    prediction: str = "data"
    order: int = 2
    history: int = 3
    denoise_end: bool = True
    coefficients: list = field(default_factory=list)
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
        """The ridge's floors (:func:`.least_squares.least_squares_coefficients`): a guidance direction's
        coefficient is penalized at least at the norm of ``D_n`` — near the end of a pilot every sample has settled
        in its class and G is nearly zero, while a sample between classes has a G as large as D's changes."""
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
    state does — the refinement moves (a, t) (:func:`.refine.refine_end_to_end`). The velocity kept is the state's,
    ``(x − D)/σ``."""
    scale, sigma_scale = solver.first_call
    if not first or (scale == 1.0 and sigma_scale == 1.0):
        return derivative(x, sigma)
    denoised, _ = derivative.denoise(x * scale, sigma * sigma_scale)
    return Evaluation((x - denoised) / sigma, denoised)


def first_call_fits(grid, first_call) -> bool:
    """A first call ``(a, t)`` at a σ above the grid's σ_1 and not above σ_0 (t ≤ 1): the rule of the schedule
    search's candidates (:func:`.schedule_search.optimize_fitted`) and of the refinement's steps
    (:func:`.refine.refine_end_to_end`)."""
    first = float(grid[0])
    second = next((float(s) for s in grid[1:] if float(s) < first), 0.0)  # σ_1 of the grid without repeats
    return second < first_call[1] * first <= first


def describe_first_call(first_call) -> str:
    """``(a·x, t·σ_max)`` with a and t to three decimals, for reports and logs."""
    scale, sigma_scale = first_call
    return f"({scale:.3f}·x, {sigma_scale:.3f}·σ_max)"


def run_solver(model, x, grid, sigmas, extra_args, callback, disable, solver: FittedSolver, checkpoints=None,
               guidance=None):
    """Sample ``grid`` (without repeats; ``sigmas`` the caller's grid, for the model wrapper and the callback)
    with ``solver``'s coefficients; ``checkpoints`` (a list) receives ``(x_n, history snapshot)`` before each
    step's update. ``guidance``: the source of each model call's guidance direction (see :func:`.fit.fit_solver`)."""
    derivative = ModelDerivative(model, x, sigmas, extra_args, None)
    history = _History(solver)
    for i in progress_range(len(grid) - 1, disable=disable):
        evaluation = _evaluate(derivative, x, grid[i], solver, i == 0)
        report(callback, x, i, sigmas[i], evaluation.denoised)
        history.push(grid[i], evaluation, _latest_guidance(guidance, solver))
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
        self.endpoint = run_solver(model, x, grid, sigmas, extra_args, None, True, solver,
                                   checkpoints=self.checkpoints, guidance=guidance)

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
    guidance directions needs the same ``guidance`` source as the fit (:func:`.fit.fit_solver`)."""
    if not isinstance(solver, FittedSolver):
        raise ValueError(f"{WHO}: needs a fitted solver (the FlowScope · Fitted Solver node makes one), "
                         f"got {type(solver).__name__}")
    steps = SigmaSteps(sigmas, WHO, callback)
    validate_latent(x, WHO)
    solver.check_grid(steps.grid)
    x = run_solver(model, x, steps.grid, steps.sigmas, extra_args, steps.callback, disable, solver,
                   guidance=guidance)
    return steps.finish(x)


