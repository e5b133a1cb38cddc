"""The Fitted Solver's presets: the configurations of the quality benchmark's Fitted Solver contenders
(docs/benchmark_quality.md), so a user gets a measured configuration without setting history, search or
refinement.

- ``fast``: the step-by-step fit (data base of order 3, history 8) on the input SIGMAS — the benchmark's
  ``fs_fitted``; costs the reference solve plus 4 × steps model calls.
- ``balanced``: the same with the schedule search over 60 candidate grids and the first-call search — the
  benchmark's ``fs_fitted_schedule``; adds ≈ 60–70 × steps × 4 model calls. The search picks the grid whose fit
  has the lowest pilot error, which on a pilot of fewer than :data:`MIN_SEARCH_LATENTS` latents can be a grid that
  only suits those latents (docs/benchmark_pilot_sizes.md: analytic-narrow demo, 8 steps, 4 latents: test error
  0.46 against 0.0060 without the search), so there it is left out (and the report says so).
- ``best``: ``balanced`` then the end-to-end refinement, 12 iterations up to 8 steps and 6 above — the benchmark's
  ``fs_fitted_refined``. The benchmark runs it on pilots of 256–512 latents; measured on 16 latents it overfit
  (held-out error up to 18 % above the plain fit's) and on 64 it improved, so with fewer than
  :data:`MIN_REFINE_LATENTS` pilot latents the refinement is left out, and below :data:`MIN_SEARCH_LATENTS` the
  schedule search too (the report says so).
- ``custom``: the node's own inputs.

Every preset, ``custom`` included, then goes through the small-pilot rule (:func:`small_pilot_settings`, applied
by :func:`~.pipeline.fit_pipeline` from the pilot's latent count).
"""
from __future__ import annotations

from dataclasses import replace

PRESETS = ("custom", "fast", "balanced", "best")
MIN_REFINE_LATENTS = 64
MIN_SEARCH_LATENTS = 16
SEARCH_EVALUATIONS = 60
SMALL_PILOT_LATENTS = 16  # pilots of fewer latents get the small-pilot rule
SMALL_PILOT_RIDGE = 1e-2  # the least ridge they are fitted with


def preset_settings(preset: str, settings, steps: int, latents: int) -> tuple:
    """``(settings, note)``: ``settings`` (a :class:`~.pipeline.FitSettings`) with the preset's options for a
    ``steps``-step grid and a pilot of ``latents`` latents; ``note`` is '' or what the pilot size changed."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if preset == "custom":
        return settings, ""
    chosen = replace(settings, prediction="data", order=3, history=8, schedule_evaluations=0, refine_iterations=0)
    if preset == "fast":
        return chosen, ""
    stages = {"schedule search": MIN_SEARCH_LATENTS}  # stage → the least pilot latents it is run from
    if preset == "best":
        stages["refinement"] = MIN_REFINE_LATENTS
    left_out = [stage for stage, needed in stages.items() if latents < needed]
    if "schedule search" not in left_out:
        chosen = replace(chosen, schedule_evaluations=SEARCH_EVALUATIONS)
    if "refinement" in stages and "refinement" not in left_out:
        chosen = replace(chosen, refine_iterations=12 if steps <= 8 else 6)
    if not left_out:
        return chosen, ""
    needs = "; ".join(f"the {stage} needs {stages[stage]} or more" for stage in left_out)
    return chosen, (f"preset {preset}: {' and '.join(left_out)} left out ({latents} pilot latents; {needs} not to "
                    "overfit)")


def small_pilot_settings(settings, latents: int) -> tuple:
    """``(settings, note)``: the small-pilot rule for a pilot of ``latents`` latents (``note`` '' when nothing
    changed, else what did and why).

    Each step fits about ``history`` coefficients with every entry of the pilot as one equation, so even one
    latent gives many equations per coefficient — but they are strongly correlated: on a model whose
    trajectories span few directions (a mixture of narrow, well separated components) the fit reproduces the
    pilot's reference nearly exactly with coefficients that are far off on fresh seeds (docs/fitted_solver.md:
    the analytic-narrow demo model, 1 latent, 8 steps, test endpoint error 1.01; 0.044 with this rule). The
    cross-validated ridge cannot see it: the two halves it validates on come from the same few latents and
    agree too well, so it picks the smallest ridge. With fewer than :data:`SMALL_PILOT_LATENTS` latents (and
    ``settings.small_pilot``) the ridge is therefore kept at :data:`SMALL_PILOT_RIDGE` or above (shrinkage
    toward the base update, c = 0: the penalty ``λ·(c_k ‖f_k‖)²`` of
    :func:`~.least_squares.least_squares_coefficients`). The history is left as it is: fewer coefficients cost
    2–11× in endpoint error on other benchmark problems at 4–16 NFE with the same pilots. The base-update
    fallback on the pilot and on the held-out halves stays as it is."""
    if not settings.small_pilot or latents >= SMALL_PILOT_LATENTS or settings.min_ridge >= SMALL_PILOT_RIDGE:
        return settings, ""
    return (replace(settings, min_ridge=SMALL_PILOT_RIDGE),
            f"small pilot ({latents} latent{'s' if latents > 1 else ''} < {SMALL_PILOT_LATENTS}): least ridge "
            f"{settings.min_ridge:g} → {SMALL_PILOT_RIDGE:g}")
