"""Explicit Runge–Kutta methods as data: Butcher tableaux that check themselves when built.

A tableau ``(a, b, c)`` with stages ``k_j = f(x + h Σ_{l<j} a_jl k_l, σ + c_j h)`` and update
``x' = x + h Σ_j b_j k_j``; an embedded pair adds ``b_error = b − b̂`` (weights of the error estimate
``h Σ_j b_error_j k_j``, whose leading term is of order ``error_order + 1``).

Construction checks (``ValueError`` otherwise): strictly explicit (row j has j entries), ``c_0 = 0``,
each row of ``a`` sums to its ``c`` (1e-12), ``Σ b = 1``, ``Σ b_error = 0``, and the Butcher order
conditions (rooted trees, Butcher 2016 §3) of the stated ``order`` — and ``error_order`` for the embedded
weights ``b − b_error`` — up to order 5.

Sources: J. C. Butcher, *Numerical Methods for Ordinary Differential Equations*, 3rd ed., Wiley 2016
(Euler, Heun, midpoint, Ralston, Kutta's third-order method, classic RK4, Kutta's 3/8 rule);
P. Bogacki & L. F. Shampine, "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2 (1989);
J. R. Dormand & P. J. Prince, "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6 (1980).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction as F
from typing import Optional

_TOL = 1e-12


def _rooted_trees(max_order: int) -> dict[int, list[tuple]]:
    """Rooted trees up to ``max_order`` nodes; a tree is the sorted tuple of its child subtrees."""
    trees = {1: [()]}
    for n in range(2, max_order + 1):
        found = set()
        smaller = [t for k in range(1, n) for t in trees[k]]
        size = {t: _tree_order(t) for t in smaller}
        for count in range(1, n):
            for children in itertools.combinations_with_replacement(smaller, count):
                if sum(size[t] for t in children) == n - 1:
                    found.add(tuple(sorted(children)))
        trees[n] = sorted(found)
    return trees


def _tree_order(tree: tuple) -> int:
    return 1 + sum(_tree_order(child) for child in tree)


def _tree_density(tree: tuple) -> int:
    density = _tree_order(tree)
    for child in tree:
        density *= _tree_density(child)
    return density


def _stage_weights(tree: tuple, a: list[list[float]]) -> list[float]:
    """g_i(t) = Π_children Σ_j a_ij g_j(child); the elementary weight is Σ_i b_i g_i(t)."""
    stages = len(a)
    g = [1.0] * stages
    for child in tree:
        gc = _stage_weights(child, a)
        for i in range(stages):
            g[i] *= sum(a[i][j] * gc[j] for j in range(len(a[i])))
    return g


def order_condition_residuals(a, b, order: int) -> dict[tuple, float]:
    """``Φ(t) − 1/γ(t)`` for every rooted tree t with at most ``order`` (≤ 5 checked) nodes."""
    residuals = {}
    trees = _rooted_trees(min(order, 5))
    for n in range(1, min(order, 5) + 1):
        for tree in trees[n]:
            weight = sum(bi * gi for bi, gi in zip(b, _stage_weights(tree, a)))
            residuals[tree] = weight - 1.0 / _tree_density(tree)
    return residuals


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method (optionally an embedded pair). Validates on construction."""

    name: str
    a: tuple  # lower-triangular rows: a[j] has j entries
    b: tuple
    c: tuple
    order: int
    b_error: Optional[tuple] = None  # b − b̂ of the embedded lower-order weights
    error_order: Optional[int] = None  # order of the embedded weights b̂
    fsal: bool = False  # last stage is evaluated at (x_next, σ_next): reusable as the next first stage

    def __post_init__(self):
        object.__setattr__(self, "a", tuple(tuple(float(v) for v in row) for row in self.a))
        object.__setattr__(self, "b", tuple(float(v) for v in self.b))
        object.__setattr__(self, "c", tuple(float(v) for v in self.c))
        if self.b_error is not None:
            object.__setattr__(self, "b_error", tuple(float(v) for v in self.b_error))
        who = f"ButcherTableau {self.name!r}"
        stages = len(self.c)
        if stages == 0 or len(self.b) != stages or len(self.a) != stages:
            raise ValueError(f"{who}: a, b and c must all have one entry per stage "
                             f"(got {len(self.a)} rows, {len(self.b)} weights, {len(self.c)} nodes)")
        for j, row in enumerate(self.a):
            if len(row) != j:
                raise ValueError(f"{who}: row {j} of a has {len(row)} entries; an explicit method needs "
                                 f"exactly {j} (strictly lower triangular)")
            if abs(sum(row) - self.c[j]) > _TOL:
                raise ValueError(f"{who}: row {j} of a sums to {sum(row)!r}, not c[{j}] = {self.c[j]!r}")
        if abs(sum(self.b) - 1.0) > _TOL:
            raise ValueError(f"{who}: the weights b sum to {sum(self.b)!r}, not 1")
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"{who}: order must be a positive integer, got {self.order!r}")
        self._check_order(self.b, self.order, "b")
        if self.b_error is not None:
            if len(self.b_error) != stages:
                raise ValueError(f"{who}: b_error has {len(self.b_error)} entries for {stages} stages")
            if abs(sum(self.b_error)) > _TOL:
                raise ValueError(f"{who}: the error weights b_error sum to {sum(self.b_error)!r}, not 0")
            if self.error_order is None or not 1 <= self.error_order < self.order:
                raise ValueError(f"{who}: an embedded pair needs 1 ≤ error_order < order, "
                                 f"got error_order={self.error_order!r}")
            embedded = [bi - ei for bi, ei in zip(self.b, self.b_error)]
            self._check_order(embedded, self.error_order, "b − b_error")
        elif self.error_order is not None:
            raise ValueError(f"{who}: error_order given without b_error")
        if self.fsal:
            if self.c[-1] != 1.0 or any(abs(x - y) > _TOL for x, y in zip(self.a[-1], self.b[:-1])) \
                    or self.b[-1] != 0.0:
                raise ValueError(f"{who}: fsal needs c[-1] = 1, the last row of a equal to b and b[-1] = 0")

    def _check_order(self, weights, order, label):
        for tree, residual in order_condition_residuals(self.a, weights, order).items():
            if abs(residual) > 1e-10:
                raise ValueError(f"ButcherTableau {self.name!r}: weights {label} violate the order-"
                                 f"{_tree_order(tree)} condition of tree {tree} (residual {residual:.3g}); "
                                 f"the stated order is {order}")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def is_embedded(self) -> bool:
        return self.b_error is not None

    def evaluations_per_step(self) -> int:
        """Model evaluations per step in a chain of steps (FSAL pairs reuse their last stage)."""
        return self.stages - 1 if self.fsal else self.stages


EULER = ButcherTableau("euler", a=((),), b=(1,), c=(0,), order=1)
HEUN = ButcherTableau("heun", a=((), (1,)), b=(F(1, 2), F(1, 2)), c=(0, 1), order=2)
MIDPOINT = ButcherTableau("midpoint", a=((), (F(1, 2),)), b=(0, 1), c=(0, F(1, 2)), order=2)
RALSTON = ButcherTableau("ralston", a=((), (F(2, 3),)), b=(F(1, 4), F(3, 4)), c=(0, F(2, 3)), order=2)
RK3 = ButcherTableau("rk3", a=((), (F(1, 2),), (-1, 2)), b=(F(1, 6), F(2, 3), F(1, 6)),
                     c=(0, F(1, 2), 1), order=3)
RK4 = ButcherTableau("rk4", a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
                     b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)), c=(0, F(1, 2), F(1, 2), 1), order=4)
RK38 = ButcherTableau("rk38", a=((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
                      b=(F(1, 8), F(3, 8), F(3, 8), F(1, 8)), c=(0, F(1, 3), F(2, 3), 1), order=4)

_BOSH3_B = (F(2, 9), F(1, 3), F(4, 9), 0)
_BOSH3_BHAT = (F(7, 24), F(1, 4), F(1, 3), F(1, 8))
BOSH3 = ButcherTableau(
    "bosh3", a=((), (F(1, 2),), (0, F(3, 4)), _BOSH3_B[:3]), b=_BOSH3_B, c=(0, F(1, 2), F(3, 4), 1),
    order=3, b_error=tuple(x - y for x, y in zip(_BOSH3_B, _BOSH3_BHAT)), error_order=2, fsal=True)

_DOPRI5_B = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
_DOPRI5_BHAT = (F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40))
DOPRI5 = ButcherTableau(
    "dopri5",
    a=((),
       (F(1, 5),),
       (F(3, 40), F(9, 40)),
       (F(44, 45), F(-56, 15), F(32, 9)),
       (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
       (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
       _DOPRI5_B[:6]),
    b=_DOPRI5_B, c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1), order=5,
    b_error=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_BHAT)), error_order=4, fsal=True)

# DOPRI5's continuous extension of order 4 (Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations I*,
# 2nd ed., §II.6, and their dopri5.f, ``contd5``): the weights of the seven stage derivatives in the fifth
# Hermite-type coefficient of the dense output (see :func:`~.adaptive._dense_output`).
DOPRI5_DENSE = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
                701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)

TABLEAUX: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, HEUN, MIDPOINT, RALSTON, RK3, RK4, RK38, BOSH3, DOPRI5)
}


def get_tableau(method, who: str = "get_tableau") -> ButcherTableau:
    """A tableau by name (or the tableau itself); ``ValueError`` naming ``who`` for unknown names."""
    if isinstance(method, ButcherTableau):
        return method
    if method not in TABLEAUX:
        raise ValueError(f"{who}: method = {method!r} is not one of {sorted(TABLEAUX)}")
    return TABLEAUX[method]
