"""Ridge-regularized linear least squares with the ridge chosen by two-fold cross-validation: the per-step fit of
a :class:`~.solver.FittedSolver` (float64 normal equations on normalized columns; Hoerl & Kennard 1970 for the
ridge, Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, §7.10 for cross-validation)."""
from __future__ import annotations

import math

import torch

RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def ridges_from(min_ridge: float) -> tuple:
    """The candidate ridges of :func:`least_squares_coefficients` not below ``min_ridge`` (``min_ridge`` alone when
    none is): a floor on the shrinkage toward 0 that the cross-validation may not go under."""
    if not min_ridge >= 0:
        raise ValueError(f"min_ridge = {min_ridge!r} must be 0 or more")
    return tuple(r for r in RIDGES if r >= min_ridge) or (float(min_ridge),)


def two_folds(batch: int, size: int) -> tuple:
    """Index tuples of the two validation halves of ``[B, M]`` pilot data: even/odd samples, or the two halves of
    the latent for a batch of one (the ridge's cross-validation and the end-to-end refinement's guard)."""
    if batch >= 2:
        return (slice(0, None, 2), slice(None)), (slice(1, None, 2), slice(None))
    return (slice(None), slice(None, size // 2)), (slice(None), slice(size // 2, None))


def fold_rows(tensor, fold):
    """``tensor`` (``[B, …]``) flattened to ``[B, M]`` and cut to ``fold`` (an index of :func:`two_folds`)."""
    return tensor.reshape(tensor.shape[0], -1)[fold]


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
    folds = [(rows[(slice(None),) + fold], target[fold]) for fold in two_folds(*target.shape)]
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


