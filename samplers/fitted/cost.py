"""What a fit costs in model calls: the plan before it runs, the count while it runs, and the budget it keeps.

One model call is one batched evaluation of the pilot (as one sampler step of Euler costs). The stages:

- the reference solve: adaptive Dormand–Prince, so its cost is known only afterwards (typically hundreds to a
  few thousand calls; :data:`~..reference.REFERENCE_MAX_NFE` at most, or what the budget leaves);
- the fit: ``4N`` for N steps — the fit, the base run, and the two cross-fitted held-out runs
  (:func:`~.fit.fit_solver`);
- the schedule search: ``N`` per first call tried per candidate grid (:func:`~.schedule_search.optimize_fitted`);
  Nelder–Mead over ``k`` knots evaluates the input grid, at least its first simplex (``k + 1`` grids) and may
  finish a shrink (``k`` more) past its cap;
- the refinement: ≈ ``(history + 1)·N²/2 + 2N`` per iteration — one run per coefficient started at its step,
  and the trial steps of its damping search, usually one or two full runs but more when steps are rejected
  (:func:`~.refine.refine_end_to_end`). It is the one stage whose cost is not bounded in advance, so a budget
  stops it in flight (:class:`ModelCallBudgetExhausted`) and it keeps the best iterate reached.
"""
from __future__ import annotations

import math

MIN_REFERENCE_CALLS = 50  # below this a tolerance-controlled reference solve cannot be trusted


class ModelCallBudgetExhausted(Exception):
    """Raised by a :class:`ModelCallCounter` before a call past its ``limit``."""


class ModelCallCounter:
    """``model`` with a count of its calls (all other attributes pass through); with ``limit`` set, a call that
    would exceed it raises :class:`ModelCallBudgetExhausted` instead of being made."""

    def __init__(self, model, limit=None):
        self.model, self.calls, self.limit = model, 0, limit

    def __call__(self, *args, **kwargs):
        if self.limit is not None and self.calls >= self.limit:
            raise ModelCallBudgetExhausted(f"the budget of {self.limit} model calls is spent")
        self.calls += 1
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def fit_calls(steps: int) -> int:
    return 4 * steps


SEARCH_KNOTS = 6  # the schedule search's knots (:func:`~.schedule_search.optimize_fitted`)


def search_candidates(evaluations: int, steps: int, knots: int = SEARCH_KNOTS) -> int:
    """Candidate grids a search capped at ``evaluations`` fits at most (input grid, simplex, a final shrink)."""
    knots = min(knots, steps)
    return 1 + max(evaluations, knots + 1) + knots if evaluations > 0 else 0


def affordable_evaluations(calls: int, steps: int, first_calls: int, knots: int = SEARCH_KNOTS) -> int:
    """The largest search cap whose candidates fit in ``calls`` model calls (0: not even the first simplex)."""
    knots = min(knots, steps)
    evaluations = calls // (steps * first_calls) - 1 - knots
    return evaluations if evaluations >= knots + 1 else 0


def search_calls(steps: int, evaluations: int, first_calls: int) -> int:
    return steps * first_calls * search_candidates(evaluations, steps)


def refinement_calls_per_iteration(steps: int, history: int) -> int:
    """Typical model calls of one refinement iteration (not a bound: see the module docstring)."""
    return math.ceil((history + 1) * steps * steps / 2) + 2 * steps


def planned_calls(steps: int, history: int, schedule_evaluations: int, refine_iterations: int,
                  first_calls: int) -> dict:
    """Model calls of each stage after the reference solve: at most for the fit and the search, typical for the
    refinement (see the module docstring)."""
    return {"fit": fit_calls(steps),
            "schedule_search": search_calls(steps, schedule_evaluations, first_calls),
            "refinement": refine_iterations * refinement_calls_per_iteration(steps, history)}


def describe_plan(planned: dict, budget: int = 0) -> str:
    stages = ", ".join(f"{name.replace('_', ' ')} {'≈' if name == 'refinement' else '≤'} {calls}"
                       for name, calls in planned.items() if calls)
    limit = f"; max_model_calls {budget}" if budget else ""
    return f"reference solve (adaptive, hundreds to thousands of model calls), then {stages}{limit}"
