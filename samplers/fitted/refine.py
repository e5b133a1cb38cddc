"""End-to-end refinement of a fitted solver: Levenberg–Marquardt on all its coefficients (and optionally its σ
nodes and first model call) against the pilot's reference endpoint.

The step-by-step fit (:mod:`.fit`) makes each step land on the reference state; the refinement minimizes the
endpoint error itself — the objective Bespoke solvers train on (Shaul et al. 2024, arXiv:2403.01329) — with the
Levenberg–Marquardt method (Levenberg 1944; Marquardt 1963, with Marquardt's diagonal scaling): for a residual
``r(p)`` and its Jacobian ``J``, the step ``δ = (JᵀJ + μ·diag(JᵀJ))⁻¹ Jᵀr`` for a damping μ that is raised until a
step is accepted and lowered after one. ``J`` is taken by forward differences, one pilot run per parameter, each
started at the parameter's own step from a cached run (:class:`~.solver._StepCache`).

Overfitting guard: the step is computed on one half of the pilot (:func:`~.least_squares.two_folds`) and accepted
only when the error falls on both halves (early stopping on the held-out half).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..common import SigmaSteps
from .cost import ModelCallBudgetExhausted
from .least_squares import fold_rows, two_folds
from .solver import FittedSolver, _StepCache, first_call_fits, run_solver

TRIMMED_FRACTION = 0.02  # the guard leaves out this fraction of each half's largest sample errors
START_DAMPING, MAX_DAMPING = 1e-3, 1e8  # the Levenberg–Marquardt damping: first try, give up past it


@dataclass(frozen=True)
class Refinement:
    """The result of :func:`refine_end_to_end`: the refined solver (its ``sigmas`` the refined grid, its
    ``first_call`` the refined first call), the pilot endpoint RMS error before and after (whole pilot, and the
    held-out half), the iterations up to the returned iterate, all steps the guard accepted, and how many σ nodes
    moved."""
    solver: FittedSolver
    error_before: float
    error: float
    held_out_before: float
    held_out: float
    iterations: int
    accepted: int
    moved_nodes: int
    stopped_by_budget: bool = False


def _endpoint_folds(residual):
    """The two halves (:func:`~.least_squares.two_folds`) of an endpoint residual ``[B, …]`` as float64 rows, one
    per sample (a batch of one, split along the latent: one row each)."""
    flat = residual.double()
    return tuple(fold_rows(flat, fold) for fold in two_folds(flat.shape[0], flat[0].numel()))


def _trimmed_squared_error(rows) -> float:
    """The sum of the per-sample mean squared errors of a fold (:func:`_endpoint_folds`) without the largest
    ⌊:data:`TRIMMED_FRACTION` × samples⌋ of them — a least-trimmed-squares criterion (Rousseeuw 1984)."""
    mean_squares = rows.pow(2).mean(1)
    kept = len(mean_squares) - int(TRIMMED_FRACTION * len(mean_squares))
    return float(mean_squares.sort().values[:kept].sum())


def _rms(flat) -> float:
    return float(flat.pow(2).mean().sqrt())


def search_damping(judge, damping: float):
    """The damping search of one Levenberg–Marquardt iteration. ``judge(d)`` tries the candidate steps of damping
    ``d`` and returns (an outcome that passes the guard, a candidate that passes only the trimmed guard), each or
    both None. From ``damping`` the damping grows tenfold (a shorter, more conservative step) up to
    :data:`MAX_DAMPING`; when no candidate passes, the dampings from :data:`START_DAMPING` up to ``damping`` are
    tried too: a step found at high damping leaves the damping high, and the guard — the error on both pilot
    halves, not the objective the step minimizes — is not monotone in the step length. Returns (outcome, its
    damping, None), or (None, None, fallback) with fallback = (the least damped trimmed-guard candidate, its
    damping) or None."""
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


class _Parameters:
    """The refinement's parameter vector (float64): every step's coefficients, then — with ``move_grid`` — the
    log σ of the movable nodes (every positive σ after σ_0, the final 0 stays), then — with ``move_first_call`` —
    the first call's ``log a`` and ``log t``."""

    def __init__(self, solver: FittedSolver, grid, move_grid: bool, move_first_call: bool):
        self.grid, self.lengths = grid, [len(c) for c in solver.coefficients]
        self.coefficient_count = sum(self.lengths)
        self.movable = list(range(1, len(grid) - 1)) if move_grid else []
        self.node_logs = [math.log(grid[i]) for i in self.movable]
        self.first_call = tuple(solver.first_call)
        self.first_logs = [math.log(v) for v in self.first_call] if move_first_call else []
        # the first step each parameter acts at: its own for a coefficient, the step landing on it for a node; the
        # first call's (a, t) change every step's input (−1: a whole run)
        self.step_of = ([n for n, count in enumerate(self.lengths) for _ in range(count)]
                        + [index - 1 for index in self.movable] + [-1] * len(self.first_logs))
        self.start = torch.tensor([v for c in solver.coefficients for v in c] + self.node_logs + self.first_logs,
                                  dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.step_of)

    def kind(self, k: int) -> str:
        if k < self.coefficient_count:
            return "coefficient"
        return "node" if k < self.coefficient_count + len(self.movable) else "first call"

    @staticmethod
    def _moved(values, starts, originals):
        # exp(log v) need not round-trip: an unmoved parameter keeps its exact value
        return [original if log_value == start else math.exp(log_value)
                for log_value, start, original in zip(values, starts, originals)]

    def unpack(self, vector):
        """(per-step coefficient lists, grid, first call) of a parameter vector."""
        values, start = vector.tolist(), 0
        coefficients = []
        for n in self.lengths:
            coefficients.append(values[start:start + n])
            start += n
        nodes = list(self.grid)
        node_values = values[self.coefficient_count:self.coefficient_count + len(self.movable)]
        for index, sigma in zip(self.movable, self._moved(node_values, self.node_logs,
                                                           [self.grid[i] for i in self.movable])):
            nodes[index] = sigma
        first = self.first_call
        if self.first_logs:
            first = tuple(self._moved(values[self.coefficient_count + len(self.movable):], self.first_logs,
                                      self.first_call))
        return coefficients, nodes, first

    def valid(self, vector) -> bool:
        """Strictly decreasing nodes; a first call at a σ between σ_1 and σ_0 (t ≤ 1)."""
        _, nodes, first = self.unpack(vector)
        return all(a > b for a, b in zip(nodes, nodes[1:])) and first_call_fits(nodes, first)

    def difference_step(self, k: int, vector, nodes) -> float:
        """The forward-difference step of parameter ``k``: relative for a coefficient; a node moves up in log σ,
        well inside its gap above; the first call's log a and log t move down (t may sit at its bound 1)."""
        kind = self.kind(k)
        if kind == "coefficient":
            return 1e-3 * max(1.0, abs(float(vector[k])))
        if kind == "node":
            index = self.movable[k - self.coefficient_count]
            return min(1e-3, 0.25 * math.log(nodes[index - 1] / nodes[index]))
        return -1e-3

    def candidates(self, vector, normal, gradient, scale, damping):
        """The damped Gauss–Newton steps at this damping: all parameters, then — with the first call — all but its
        (a, t), then — with nodes — the coefficients alone (the endpoint is far less linear in the nodes and the
        first call than in the coefficients, so a step that fails because of them does not hold the others back
        to ever shorter steps). The first call's t is projected onto t ≤ 1: at σ_max a step up in σ is out of the
        model's range."""
        sizes = sorted({len(self), len(self) - len(self.first_logs), self.coefficient_count}, reverse=True)
        for size in sizes:
            step = torch.linalg.solve(normal[:size, :size] + damping * scale[:size, :size], gradient[:size])
            candidate = torch.cat([vector[:size] - step, vector[size:]])
            if self.first_logs:
                candidate[-1] = candidate[-1].clamp_max(0.0)
            yield candidate


@dataclass
class _Iterate:
    """A parameter vector with its cached run and its endpoint residual, whole and split into the fitting and the
    held-out half."""
    vector: torch.Tensor
    run: _StepCache
    residual: torch.Tensor
    fit_part: torch.Tensor
    held_part: torch.Tensor

    def plain_errors(self) -> tuple:
        return float(self.fit_part.pow(2).sum()), float(self.held_part.pow(2).sum())

    def trimmed_errors(self) -> tuple:
        return _trimmed_squared_error(self.fit_part), _trimmed_squared_error(self.held_part)


def _falls(errors, before) -> bool:
    return errors[0] < before[0] and errors[1] < before[1]


class _EndToEnd:
    """The refinement's problem: pilot runs of the solver for a parameter vector against the pilot endpoint."""

    def __init__(self, model, x, sigmas, endpoint, solver, extra_args, guidance, parameters: _Parameters):
        self.model, self.x, self.sigmas, self.endpoint = model, x, sigmas, endpoint
        self.solver, self.extra_args, self.guidance, self.parameters = solver, extra_args, guidance, parameters

    def solver_for(self, vector) -> tuple:
        coefficients, nodes, first = self.parameters.unpack(vector)
        return replace(self.solver, coefficients=coefficients, first_call=first), nodes

    def evaluate(self, vector) -> _Iterate:
        """The run with these parameters, its checkpoints kept: the next iteration's Jacobian starts from it."""
        solver, nodes = self.solver_for(vector)
        run = _StepCache(self.model, self.x, nodes, self.sigmas, self.extra_args, solver, self.guidance)
        residual = run.endpoint - self.endpoint
        return _Iterate(vector, run, residual, *_endpoint_folds(residual))

    def jacobian(self, current: _Iterate) -> torch.Tensor:
        """Forward differences of the fitting half's residual, one pilot run per parameter: from the cached run
        at the parameter's first step, or a whole run for the first call's (a, t)."""
        parameters, vector = self.parameters, current.vector
        jacobian = torch.empty(current.fit_part.numel(), len(parameters), dtype=torch.float64)
        nodes = parameters.unpack(vector)[1]
        for k in range(len(parameters)):
            delta = parameters.difference_step(k, vector, nodes)
            shifted = vector.clone()
            shifted[k] += delta
            if parameters.step_of[k] < 0:
                solver, moved_nodes = self.solver_for(shifted)
                moved_end = run_solver(self.model, self.x, moved_nodes, self.sigmas, self.extra_args, None, True,
                                       solver, guidance=self.guidance)
            else:
                moved_coefficients, moved_nodes, _ = parameters.unpack(shifted)
                moved_end = current.run.run_from(parameters.step_of[k], moved_coefficients, moved_nodes)
            jacobian[:, k] = ((_endpoint_folds(moved_end - self.endpoint)[0] - current.fit_part) / delta).reshape(-1)
        return jacobian


def refine_end_to_end(model, x, sigmas, endpoint, solver: FittedSolver, extra_args=None, iterations=4,
                      move_grid=False, guidance=None, move_first_call=False) -> Refinement:
    """Refine all coefficients of a fitted ``solver`` at once against the pilot ``endpoint`` (the reference state
    at σ = sigmas[−1], the last of the fit's targets) by Levenberg–Marquardt (see the module docstring):
    ≈ ``P · steps / 2`` model calls per iteration, P = the number of parameters (≈ 9 coefficients per step at
    history 8).

    ``move_grid``: the σ nodes after the first (in log σ) are parameters too, as the time discretization is in
    Bespoke solvers (Shaul et al. 2023, "Bespoke Solvers for Generative Flow Models", arXiv:2310.19075): a smooth
    warp (:func:`~.schedule_search.optimize_fitted`) cannot place single nodes, and a model's output varies with σ
    at scales far below a step (the sinusoidal timestep embedding of SD-type networks). A candidate whose nodes
    are not strictly decreasing is rejected like one that does not lower the error.

    ``move_first_call``: the first model call's ``log a`` and ``log t`` (:func:`~.solver._evaluate`) are parameters
    too (each Jacobian column a whole pilot run; t is projected onto t ≤ 1 and a candidate whose ``t·σ_0`` is not
    above σ_1 is rejected); at each damping the step without them is tried before the coefficients alone.

    The guard: a step is accepted when the error falls on both pilot halves; otherwise the damping grows until
    one does (:func:`search_damping`), and the refinement stops when none does. When no step passes at any
    damping, a step whose *least-trimmed* errors fall on both halves (each half without its largest
    :data:`TRIMMED_FRACTION` of per-sample errors) is taken instead (the least damped one found): a pilot sample
    near a mode boundary can end in either mode, and its error, swinging by far more than the others', would
    otherwise veto every step. Since the left-out samples may then drift, the refinement returns the iterate with
    the lowest untrimmed held-out error (the start if none is lower).

    ``guidance``: the source of the guidance directions a solver fitted with them needs
    (:func:`~.fit.fit_solver`). ``solver`` itself is left as it is."""
    if iterations < 0:
        raise ValueError(f"refine_end_to_end: iterations = {iterations} must be ≥ 0")
    steps = SigmaSteps(sigmas, "refine_end_to_end")
    grid, sigmas = steps.grid, steps.sigmas
    solver.check_grid(grid, "refine_end_to_end")
    parameters = _Parameters(solver, grid, move_grid, move_first_call)
    problem = _EndToEnd(model, x, sigmas, endpoint, solver, extra_args, guidance, parameters)

    current = problem.evaluate(parameters.start)
    start_error, start_held = _rms(current.residual.double()), _rms(current.held_part)
    best = (start_held, 0, current.vector, current.residual)  # the iterate returned: lowest held-out error
    accepted, damping, stopped_by_budget = 0, START_DAMPING, False
    for _ in range(iterations):
        try:
            jacobian = problem.jacobian(current)
            gradient, normal = jacobian.T @ current.fit_part.reshape(-1), jacobian.T @ jacobian
            # Marquardt's scaling; a parameter the endpoint barely depends on (log a of a first call at σ_max of a flow,
            # whose output does not depend on its input) would otherwise get a rounding-noise step of any size
            scale = torch.diag(normal.diagonal().clamp_min(1e-12 * float(normal.diagonal().max()) + 1e-300))
            vector, before = current.vector, (current.plain_errors(), current.trimmed_errors())
            current = None  # one cached run alive at a time: the candidates' runs below keep theirs

            def judge(damping):
                """This damping's candidates against the guard: (the first iterate that passes it, the first candidate
                whose trimmed errors fall) — each None when there is none."""
                trimmed = None
                for candidate in parameters.candidates(vector, normal, gradient, scale, damping):
                    if not parameters.valid(candidate):
                        continue
                    outcome = problem.evaluate(candidate)
                    if _falls(outcome.plain_errors(), before[0]):
                        return outcome, trimmed
                    if trimmed is None and _falls(outcome.trimmed_errors(), before[1]):
                        trimmed = candidate
                    outcome = None  # a rejected candidate's run is released before the next one is made
                return None, trimmed

            improved, found, fallback = search_damping(judge, damping)
            if improved is None and fallback is not None:  # only the trimmed sums fall: take that step, run again
                improved, found = problem.evaluate(fallback[0]), fallback[1]
            if improved is None:
                break  # no step helps both halves: the held-out half stopped improving
            current, damping = improved, max(found / 3, 1e-9)
            accepted += 1
            held_out = _rms(current.held_part)
            if held_out < best[0]:
                best = (held_out, accepted, current.vector, current.residual)
        except ModelCallBudgetExhausted:  # a budgeted model (fit_pipeline): keep the best iterate reached
            stopped_by_budget = True
            break
    held_out, chosen, vector, residual = best
    coefficients, nodes, first = parameters.unpack(vector)
    refined = replace(solver, sigmas=tuple(nodes), coefficients=coefficients, first_call=first)
    return Refinement(refined, error_before=start_error, error=_rms(residual.double()), held_out_before=start_held,
                      held_out=held_out, iterations=chosen, accepted=accepted,
                      moved_nodes=sum(a != b for a, b in zip(nodes, grid)), stopped_by_budget=stopped_by_budget)
