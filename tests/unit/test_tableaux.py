"""Butcher tableaux validate themselves: row sums, weights, error weights, explicitness, order conditions."""
from fractions import Fraction as F

import pytest

from samplers.tableaux import (BOSH3, DOPRI5, EULER, HEUN, RK4, TABLEAUX, ButcherTableau, get_tableau,
                               order_condition_residuals)


def test_constants_and_names():
    assert set(TABLEAUX) == {"euler", "heun", "midpoint", "ralston", "rk3", "rk4", "rk38", "bosh3", "dopri5"}
    expected = {"euler": (1, 1), "heun": (2, 2), "midpoint": (2, 2), "ralston": (2, 2), "rk3": (3, 3),
                "rk4": (4, 4), "rk38": (4, 4), "bosh3": (3, 4), "dopri5": (5, 7)}
    for name, (order, stages) in expected.items():
        assert (TABLEAUX[name].order, TABLEAUX[name].stages) == (order, stages)
    assert TABLEAUX["ralston"].c[1] == pytest.approx(2 / 3)
    assert BOSH3.fsal and DOPRI5.fsal and BOSH3.error_order == 2 and DOPRI5.error_order == 4
    assert DOPRI5.evaluations_per_step() == 6 and BOSH3.evaluations_per_step() == 3


@pytest.mark.parametrize("name", sorted(TABLEAUX))
def test_order_conditions_hold_exactly_to_the_stated_order_only(name):
    tableau = TABLEAUX[name]
    assert max(abs(r) for r in order_condition_residuals(tableau.a, tableau.b, tableau.order).values()) < 1e-14
    if tableau.order < 5:  # the next order fails: the stated order is the true one
        residuals = order_condition_residuals(tableau.a, tableau.b, tableau.order + 1)
        assert max(abs(r) for r in residuals.values()) > 1e-3


def test_number_of_rooted_trees():
    from samplers.tableaux import _rooted_trees
    assert [len(_rooted_trees(5)[n]) for n in range(1, 6)] == [1, 1, 2, 4, 9]


def test_row_must_sum_to_c():
    with pytest.raises(ValueError, match="row 1 of a sums to"):
        ButcherTableau("bad", a=((), (0.4,)), b=(0.5, 0.5), c=(0, 1), order=2)


def test_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="weights b sum to"):
        ButcherTableau("bad", a=((), (1,)), b=(0.5, 0.6), c=(0, 1), order=1)


def test_must_be_explicit():
    with pytest.raises(ValueError, match="strictly lower triangular"):
        ButcherTableau("bad", a=((0.0,), (1,)), b=(0.5, 0.5), c=(0, 1), order=2)


def test_error_weights_must_sum_to_zero():
    with pytest.raises(ValueError, match="b_error sum to"):
        ButcherTableau("bad", a=((), (1,)), b=(0.5, 0.5), c=(0, 1), order=2, b_error=(0.5, -0.4),
                       error_order=1)


def test_stated_order_is_checked():
    with pytest.raises(ValueError, match="order-2 condition"):
        ButcherTableau("bad", a=((), (1,)), b=(F(3, 4), F(1, 4)), c=(0, 1), order=2)


def test_shape_mismatch_and_fsal_claims():
    with pytest.raises(ValueError, match="one entry per stage"):
        ButcherTableau("bad", a=((), (1,)), b=(1,), c=(0, 1), order=1)
    with pytest.raises(ValueError, match="fsal"):
        ButcherTableau("bad", a=HEUN.a, b=HEUN.b, c=HEUN.c, order=2, fsal=True)
    with pytest.raises(ValueError, match="error_order"):
        ButcherTableau("bad", a=HEUN.a, b=HEUN.b, c=HEUN.c, order=2, b_error=(0.5, -0.5), error_order=2)


def test_get_tableau():
    assert get_tableau("rk4") is RK4 and get_tableau(EULER) is EULER
    with pytest.raises(ValueError, match="fs_x: method = 'rk9' is not one of"):
        get_tableau("rk9", "fs_x")


def test_the_dopri5_dense_output_is_exact_for_a_quartic_solution():
    """DOPRI5's continuous extension (Hairer, Nørsett & Wanner I, §II.6) has order 4: for dx/dσ = a cubic in σ the
    dense output inside a step matches the quartic solution to rounding; its weights sum to 0 (a constant
    derivative gets no correction)."""
    import torch

    from samplers.adaptive import _dense_output
    from samplers.common import Evaluation
    from samplers.runge_kutta import rk_step
    from samplers.tableaux import DOPRI5_DENSE

    assert abs(sum(DOPRI5_DENSE)) < 1e-14

    def derivative(x, sigma):
        return Evaluation(torch.full_like(x, 4 * sigma ** 3 - 3 * sigma ** 2 + 1.0), x)

    def solution(sigma):
        return sigma ** 4 - sigma ** 3 + sigma

    x0 = torch.full((1, 1), solution(0.9), dtype=torch.float64)
    step = rk_step(derivative, x0, 0.9, 0.3, DOPRI5)
    assert float(step.x) == pytest.approx(solution(0.3), abs=1e-14)
    for sigma in (0.8, 0.6, 0.45):
        x, _ = _dense_output(sigma, (0.9, x0, step.evaluations[0]), (0.3, step.x, step.last), DOPRI5,
                             step.evaluations)
        assert float(x) == pytest.approx(solution(sigma), abs=1e-14), sigma
