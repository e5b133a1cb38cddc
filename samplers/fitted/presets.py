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
"""
from __future__ import annotations

from dataclasses import replace

PRESETS = ("custom", "fast", "balanced", "best")
MIN_REFINE_LATENTS = 64
SEARCH_EVALUATIONS = 60


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
