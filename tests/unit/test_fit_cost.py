"""What a fit costs: every stage's model calls counted, the plan before the fit, and max_model_calls cutting the
schedule search and the refinement so that the whole fit stays within it."""
from dataclasses import replace

import pytest
import torch

from samplers.fitted import FitSettings, fit_pipeline
from samplers.fitted.cost import (MIN_REFERENCE_CALLS, ModelCallCounter, describe_plan, planned_calls,
                                  refinement_calls_per_iteration, search_candidates)
from tests.unit.analytic_problems import DATA_END_SIGMA, denoiser_of, make_mixture, uniform

STEPS = 6


@pytest.fixture(scope="module")
def pilot():
    model = ModelCallCounter(denoiser_of(make_mixture(stds=(0.5, 0.6), spread=0.5)))
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return model, noise


def run(pilot, **settings):
    model, noise = pilot
    before = model.calls
    result = fit_pipeline(model, noise, uniform(STEPS), FitSettings(**settings), data_end_sigma=DATA_END_SIGMA,
                          disable=True)
    return result, model.calls - before


def test_every_model_call_is_counted_in_a_stage(pilot):
    result, made = run(pilot, prediction="velocity", order=2, history=3, reference_rtol=1e-6)
    assert result.model_calls["fit"] == 4 * STEPS  # fit, base, two held-out halves
    assert result.model_calls["reference"] == result.reference_nfe > 0
    assert sum(result.model_calls.values()) == made
    summary = result.summary()
    assert summary["model_calls"] == result.model_calls and summary["cut_by_budget"] == []
    assert f"= {made}" in result.report(STEPS)


def test_the_plan_bounds_the_fit_and_the_search_and_estimates_the_refinement(pilot):
    settings = dict(prediction="velocity", order=2, history=3, reference_rtol=1e-6, schedule_evaluations=5,
                    refine_iterations=1, first_call_starts=(1.0,))
    result, made = run(pilot, **settings)
    planned = planned_calls(STEPS, 3, 5, 1, first_calls=1)
    assert result.model_calls["schedule_search"] <= planned["fit"] + planned["schedule_search"]
    assert result.schedule_search.evaluations + 1 <= search_candidates(5, STEPS)
    assert result.model_calls["refinement"] >= planned["refinement"] // 4  # a typical cost, not a bound
    assert sum(result.model_calls.values()) == made
    assert "refinement ≈ 84" in describe_plan(planned) and "max_model_calls 900" in describe_plan(planned, 900)


def test_a_budget_cuts_the_search_to_what_it_can_pay_for(pilot):
    settings = dict(prediction="velocity", order=2, history=3, reference_rtol=1e-6, schedule_evaluations=40,
                    refine_iterations=3, first_call_starts=(1.0,))
    reference = run(pilot, **settings)[0].model_calls["reference"]
    # the reference, the fit, and 20 candidate grids: a search capped at 13 (input grid, 13, a 6-point shrink)
    budget = reference + 4 * STEPS + 20 * STEPS
    result, made = run(pilot, **settings, max_model_calls=budget)
    assert made <= budget and sum(result.model_calls.values()) == made
    assert 0 < result.schedule_search.evaluations <= 13 + 6
    assert result.cut_by_budget[0] == "schedule search cut to 13 of 40 candidate grids by max_model_calls"
    assert result.refinement is None and result.cut_by_budget[1].startswith("refinement skipped")
    assert result.summary()["cut_by_budget"] == list(result.cut_by_budget)


def test_a_budget_stops_the_refinement_in_flight_and_keeps_its_best_iterate(pilot):
    settings = dict(prediction="velocity", order=2, history=3, reference_rtol=1e-6, refine_iterations=6)
    unlimited = run(pilot, **settings)[0]
    budget = unlimited.model_calls["reference"] + 4 * STEPS + refinement_calls_per_iteration(STEPS, 3) * 3 // 2
    result, made = run(pilot, **settings, max_model_calls=budget)
    assert made <= budget and result.model_calls["refinement"] < unlimited.model_calls["refinement"]
    assert result.refinement.stopped_by_budget and result.refinement.error <= result.refinement.error_before
    assert result.cut_by_budget[-1].startswith("refinement stopped by max_model_calls after")
    assert "max_model_calls" in result.report(STEPS)


def test_a_budget_below_fit_and_reference_is_a_clear_error(pilot):
    with pytest.raises(ValueError, match=rf"max_model_calls = 60 is too small for a {STEPS}-step fit: the fit takes "
                                         rf"{4 * STEPS} model calls and the reference solve at least "
                                         rf"{MIN_REFERENCE_CALLS} more"):
        run(pilot, max_model_calls=60)


def test_presets_set_the_benchmark_configurations_and_leave_out_search_and_refinement_on_small_pilots():
    from samplers.fitted.presets import MIN_REFINE_LATENTS, MIN_SEARCH_LATENTS, preset_settings

    custom = FitSettings(prediction="velocity", order=2, history=3, max_model_calls=500)
    assert preset_settings("custom", custom, 8, 4) == (custom, "")
    fast, note = preset_settings("fast", custom, 8, 4)
    assert (fast.prediction, fast.order, fast.history, fast.schedule_evaluations, fast.refine_iterations) == \
        ("data", 3, 8, 0, 0) and note == "" and fast.max_model_calls == 500
    assert preset_settings("balanced", custom, 8, MIN_SEARCH_LATENTS) == (replace(fast, schedule_evaluations=60), "")
    small, note = preset_settings("balanced", custom, 8, MIN_SEARCH_LATENTS - 1)
    assert small == fast and note == ("preset balanced: schedule search left out (15 pilot latents; the schedule "
                                      "search needs 16 or more not to overfit)")
    small, note = preset_settings("best", custom, 8, MIN_REFINE_LATENTS - 1)
    assert (small.schedule_evaluations, small.refine_iterations) == (60, 0)
    assert note.startswith("preset best: refinement left out (63 pilot latents; the refinement needs 64")
    small, note = preset_settings("best", custom, 8, 4)
    assert small == fast and note == ("preset best: schedule search and refinement left out (4 pilot latents; the "
                                      "schedule search needs 16 or more; the refinement needs 64 or more not to "
                                      "overfit)")
    assert preset_settings("best", custom, 8, MIN_REFINE_LATENTS)[0].refine_iterations == 12
    assert preset_settings("best", custom, 16, MIN_REFINE_LATENTS)[0].refine_iterations == 6
    with pytest.raises(ValueError, match="preset 'fastest' is not one of custom, fast, balanced, best"):
        preset_settings("fastest", custom, 8, 4)
