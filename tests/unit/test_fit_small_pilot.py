"""The Fitted Solver's small-pilot rule (fewer than 16 pilot latents: the ridge kept at 1e-2 or above) through
the node's pipeline, on the narrow mixture where history 8 from one latent overfits catastrophically: the rule's 1- and
4-latent fits come out no worse than the base update on fresh seeds where the old settings were far worse (1
latent) or only fell back to the base (4 latents), and the report says what the rule changed."""
from dataclasses import replace

import pytest
import torch

from samplers.fitted import FitSettings, fit_pipeline
from samplers.fitted.least_squares import RIDGES, ridges_from
from samplers.fitted.presets import SMALL_PILOT_LATENTS, SMALL_PILOT_RIDGE, small_pilot_settings
from samplers.schedules import karras_sigmas
from tests.unit.test_fit_held_out import SIGMA_MAX, SIGMA_MIN, fresh_error, narrow_mixture, noise

NODE_DEFAULTS = FitSettings(prediction="data", order=3, history=8, reference_rtol=1e-9, guidance_history=0)


def fitted(model, latents, steps, seed, small_pilot):
    """The pipeline's fit from ``latents`` pilot latents of noise ``seed``: (FitResult, fresh-seed endpoint error
    of the solver, of its base update)."""
    grid = karras_sigmas(steps, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, dtype=torch.float64)
    result = fit_pipeline(model, noise(seed, latents), grid, replace(NODE_DEFAULTS, small_pilot=small_pilot),
                          sigma_min=SIGMA_MIN, disable=True)
    base = replace(result.solver, coefficients=[[0.0] * len(c) for c in result.solver.coefficients])
    return result, fresh_error(model, grid, result.solver), fresh_error(model, grid, base)


@pytest.fixture(scope="module")
def model():
    return narrow_mixture()


@pytest.mark.parametrize("steps", [8, 16])
def test_one_latent_no_longer_overfits(model, steps):
    old, old_error, base_error = fitted(model, 1, steps, 7, small_pilot=False)
    assert old.settings.min_ridge == 0.0 and not old.fit.fallback
    assert old_error > 5 * base_error  # measured 47 vs 1.58 (8 steps), 26 vs 0.89 (16 steps)
    new, new_error, base_error = fitted(model, 1, steps, 7, small_pilot=True)
    assert new.settings.min_ridge == SMALL_PILOT_RIDGE and new.settings.history == 8
    assert new_error < base_error, (new_error, base_error)  # measured 1.33 vs 1.58, 0.78 vs 0.89
    assert "small pilot (1 latent < 16): least ridge 0 → 0.01" in new.report(steps)
    assert new.summary()["min_ridge"] == SMALL_PILOT_RIDGE


def test_four_latents_gain_where_the_old_fit_fell_back(model):
    old, old_error, base_error = fitted(model, 4, 16, 13, small_pilot=False)
    assert old.fit.fallback and old_error == base_error
    new, new_error, base_error = fitted(model, 4, 16, 13, small_pilot=True)
    assert not new.fit.fallback and new_error < 0.9 * base_error, (new_error, base_error)  # 0.72 vs 0.89


def test_the_rule_leaves_larger_pilots_larger_ridges_and_opt_outs_alone():
    assert small_pilot_settings(NODE_DEFAULTS, SMALL_PILOT_LATENTS) == (NODE_DEFAULTS, "")
    strong = replace(NODE_DEFAULTS, min_ridge=10.0)
    assert small_pilot_settings(strong, 1) == (strong, "")
    assert small_pilot_settings(replace(NODE_DEFAULTS, small_pilot=False), 1)[0].min_ridge == 0.0
    assert small_pilot_settings(NODE_DEFAULTS, 7)[0].min_ridge == SMALL_PILOT_RIDGE
    assert ridges_from(0.0) == RIDGES and ridges_from(1.0) == (1.0, 10.0, 100.0) and ridges_from(1e3) == (1e3,)
    with pytest.raises(ValueError, match="min_ridge"):
        ridges_from(-1.0)
