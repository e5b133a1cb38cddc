"""The Fitted Solver's presets: the configurations of the quality benchmark's Fitted Solver contenders
(docs/benchmark_quality.md), so a user gets a measured configuration without setting history, search or
refinement.

- ``fast``: the step-by-step fit (data base of order 3, history 8) on the input SIGMAS — the benchmark's
  ``fs_fitted``; costs the reference solve plus 4 × steps model calls.
- ``balanced``: the same with the schedule search over 60 candidate grids and the first-call search — the
  benchmark's ``fs_fitted_schedule``; adds ≈ 60–70 × steps × 4 model calls.
- ``best``: ``balanced`` then the end-to-end refinement, 12 iterations up to 8 steps and 6 above — the benchmark's
  ``fs_fitted_refined``. The benchmark runs it on pilots of 256–512 latents; measured on 16 latents it overfit
  (held-out error up to 18 % above the plain fit's) and on 64 it improved, so with fewer than
  :data:`MIN_REFINE_LATENTS` pilot latents the refinement is left out (and the report says so).
- ``custom``: the node's own inputs.

Every preset, ``custom`` included, then goes through the small-pilot rule (:func:`small_pilot_settings`, applied
by :func:`~.pipeline.fit_pipeline` from the pilot's latent count).
"""
from __future__ import annotations

from dataclasses import replace

PRESETS = ("custom", "fast", "balanced", "best")
MIN_REFINE_LATENTS = 64
SEARCH_EVALUATIONS = 60
SMALL_PILOT_LATENTS = 8  # pilots of fewer latents get the small-pilot rule
SMALL_PILOT_HISTORY = 2  # the most model outputs per step such a pilot is fitted with
SMALL_PILOT_RIDGE = 1.0  # and the least ridge it is fitted with


def preset_settings(preset: str, settings, steps: int, latents: int) -> tuple:
    """``(settings, note)``: ``settings`` (a :class:`~.pipeline.FitSettings`) with the preset's options for a
    ``steps``-step grid and a pilot of ``latents`` latents; ``note`` is '' or what the pilot size changed."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    if preset == "custom":
        return settings, ""
    chosen = replace(settings, prediction="data", order=3, history=8,
                     schedule_evaluations=0 if preset == "fast" else SEARCH_EVALUATIONS, refine_iterations=0)
    if preset != "best":
        return chosen, ""
    if latents < MIN_REFINE_LATENTS:
        return chosen, (f"preset best: refinement left out ({latents} pilot latents; it needs "
                        f"{MIN_REFINE_LATENTS} or more not to overfit)")
    return replace(chosen, refine_iterations=12 if steps <= 8 else 6), ""


def small_pilot_settings(settings, latents: int) -> tuple:
    """``(settings, note)``: the small-pilot rule for a pilot of ``latents`` latents (``note`` '' when nothing
    changed, else what did and why).

    Each step fits about ``history`` coefficients with every entry of the pilot as one equation, so even one
    latent gives many equations per coefficient — but they are strongly correlated: one latent's trajectory
    spans few directions, and the fit can reproduce the pilot's reference nearly exactly
    (pilot error 1e-11) with coefficients that are far off on fresh seeds (endpoint error 30× the base update's,
    docs/fitted_solver.md). With fewer than :data:`SMALL_PILOT_LATENTS` latents (and ``settings.small_pilot``)
    the fit therefore uses at most :data:`SMALL_PILOT_HISTORY` model outputs per step (fewer coefficients) and
    a least ridge of :data:`SMALL_PILOT_RIDGE` (on normalized columns: shrinkage toward the base update, c = 0,
    comparable to the data's own weight, which the cross-validated ridge may not go under — the two halves it
    validates on come from the same few latents and agree too well to choose it). The base-update fallback on the pilot and on the held-out halves stays as it is."""
    if not settings.small_pilot or latents >= SMALL_PILOT_LATENTS:
        return settings, ""
    history = min(settings.history, SMALL_PILOT_HISTORY)
    min_ridge = max(settings.min_ridge, SMALL_PILOT_RIDGE)
    if (history, min_ridge) == (settings.history, settings.min_ridge):
        return settings, ""
    return (replace(settings, history=history, min_ridge=min_ridge),
            f"small pilot ({latents} latent{'s' if latents > 1 else ''} < {SMALL_PILOT_LATENTS}): history "
            f"{settings.history} → {history}, least ridge {settings.min_ridge:g} → {min_ridge:g}")
