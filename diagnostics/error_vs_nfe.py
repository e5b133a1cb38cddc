"""Endpoint error against a reference solution, per sample and over a sampler × step-count sweep.

The measure behind the Compare Samplers node and the quality/convergence benchmarks: every sampler runs from
the same noise, and its endpoint x₀ is compared with a high-accuracy reference endpoint of the same noise (a
tight adaptive solve). Per sample b the error is the RMS over all latent dimensions,
e_b = sqrt(mean_i (x_b,i − x*_b,i)²); the reported figures are the RMS over samples, sqrt(mean_b e_b²) (= the
RMS over samples and dimensions), and the median of e_b, which one outlying sample does not move.
Pure torch: the caller supplies how a sampler runs (ComfyUI's sampling path in the node and the benchmarks).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def per_sample_error(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[B] RMS error of each sample over its latent dimensions; a multi-part latent (a nested tensor of [B, ...]
    parts, as ``comfy.utils.pack_latents`` packs them) counts every part's dimensions."""
    difference = samples - reference
    parts = difference.unbind() if getattr(difference, "is_nested", False) else (difference,)
    flat = torch.cat([part.detach().reshape(part.shape[0], -1) for part in parts], dim=1)
    return flat.pow(2).mean(1).sqrt()


def endpoint_errors(samples: torch.Tensor, reference: torch.Tensor) -> dict:
    """``rms_error`` (over samples and dimensions) and ``median_error`` (median per-sample RMS) of ``samples``
    against ``reference`` (same shape, same noise)."""
    per_sample = per_sample_error(samples, reference)
    return {"rms_error": float(per_sample.pow(2).mean().sqrt()), "median_error": float(per_sample.median())}


def error_vs_nfe(run: Callable[[str, int], tuple[torch.Tensor, int]], samplers: Iterable[str],
                 step_counts: Iterable[int], reference: torch.Tensor) -> list[dict]:
    """One row per sampler and step count: ``sampler``, ``steps``, ``nfe`` and :func:`endpoint_errors`, where
    ``run(sampler, steps)`` samples from the fixed noise and returns (samples, model calls)."""
    step_counts = list(step_counts)
    rows = []
    for name in samplers:
        for steps in step_counts:
            samples, nfe = run(name, steps)
            rows.append({"sampler": name, "steps": steps, "nfe": nfe, **endpoint_errors(samples, reference)})
    return rows
