"""Fitted multistep solvers: per-step linear coefficients fitted to a reference trajectory (1 NFE per step).

- :mod:`.solver` — :class:`FittedSolver` and :func:`sample_fitted` (how a fitted solver samples);
- :mod:`.least_squares` — the cross-validated ridge regression of one step's coefficients;
- :mod:`.fit` — :func:`fit_solver`, step by step against the reference states (Bespoke Non-Stationary-style,
  Shaul et al. 2024);
- :mod:`.refine` — :func:`refine_end_to_end`, Levenberg–Marquardt on all coefficients against the endpoint;
- :mod:`.schedule_search` — :func:`optimize_fitted`, the σ grid searched together with the fit;
- :mod:`.pipeline` — :func:`fit_pipeline`, all of it as the Fitted Solver node runs it.
"""
from .fit import HeldOut, SolverFit, fit_solver, held_out_estimate
from .least_squares import least_squares_coefficients
from .pipeline import FitResult, FitSettings, fit_pipeline
from .refine import Refinement, refine_end_to_end, search_damping
from .schedule_search import FIRST_CALL_STARTS, DenseReference, dense_reference, optimize_fitted
from .solver import FittedSolver, describe_first_call, first_call_fits, sample_fitted

__all__ = ["FittedSolver", "sample_fitted", "describe_first_call", "first_call_fits", "least_squares_coefficients",
           "SolverFit", "HeldOut", "fit_solver", "held_out_estimate", "Refinement", "refine_end_to_end", "search_damping", "DenseReference",
           "dense_reference", "optimize_fitted", "FIRST_CALL_STARTS", "FitSettings", "FitResult", "fit_pipeline"]
