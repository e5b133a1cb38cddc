"""The recorded trajectory of a sampling run and its path statistics (pure torch, no ComfyUI imports).

Common parameterization (one time axis for flow and diffusion models): flow models are recorded as they are
(``t = σ``); VE models (EPS/V/EDM in ComfyUI's sampler space, ``x = x0 + σ_ve ε``) are converted to flow time
``t = σ/(1+σ)``, ``x_flow = x/(1+σ)``, so both families share ``v = dx_flow/dt = (x_flow − D)/t``.

Statistics on the recorded points ``x_0..x_N`` at ``t_0 > … > t_N`` (``Δt_i = t_i − t_{i+1}``, secant
velocity ``v_i = (x_i − x_{i+1})/Δt_i``, chord ``c = x_0 − x_N``, span ``T = Σ Δt_i``), all squared norms
taken per dimension (divided by d) so figures do not depend on the resolution:
kinetic energy ``KE = Σ Δt_i ‖v_i‖²``; rectified-flow straightness (Liu et al. 2022)
``S = Σ Δt_i ‖v_i − c/T‖² = KE − ‖c‖²/T`` (= KE − ‖c‖² on [0, 1]); relative straightness
``S/(‖c‖²/T)`` (batch: ratio of means); transport efficiency ``(‖c‖²/T)/KE`` ∈ (0, 1];
path length over chord ``L/C = Σ‖x_i − x_{i+1}‖/‖c‖``; total turning angle ``Σ arccos cos(v_i, v_{i+1})``.
The per-step local error estimate is the Heun–Euler difference
``e_i = (Δt_i/2)·‖v(x_{i+1}) − v(x_i)‖`` of the velocities the sampler evaluated at the step starts.

Multi-part latents (ComfyUI ≥ 0.8 ``NestedTensor``, e.g. LTXAV video + audio) get every statistic per part as
well (:attr:`Trajectory.parts`, :func:`latent_parts`; how they are recorded: :mod:`.recorder`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def flatten_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] (or a nested tensor of several [B, ...] latents, parts in order as ``comfy.utils.pack_latents``
    concatenates them) → [B, features], without autograd history."""
    if getattr(x, "is_nested", False):
        return torch.cat([part.detach().reshape(part.shape[0], -1) for part in x.unbind()], dim=1)
    if x.requires_grad:
        x = x.detach()
    return x.reshape(x.shape[0], -1)


def latent_parts(samples) -> list[tuple[str, int]] | None:
    """Names and per-sample element counts of the parts of a multi-part latent, in the order the sampler sees
    them packed (``comfy.utils.pack_latents``: each part ``[B, ...]`` flattened to ``[B, 1, n]``, concatenated
    on the last axis); None for a plain tensor or a single part.

    Duck-typed: ``samples`` is a multi-part latent when it has a true ``is_nested`` and an ``unbind()`` that
    returns its parts as ``[B, ...]`` tensors (ComfyUI's ``comfy.nested_tensor.NestedTensor``, 0.8+; ComfyUI
    0.3.x latents are plain tensors, whose ``is_nested`` is False). Names read ``part 0 (video) 1×128×9×16×24``:
    the shape, and a kind where the layout tells it — a 5-D part is video, and a 4-D part next to a video part
    is audio (``[B, C, T, F]``, the layout of ComfyUI's LTXAV audio + video latents)."""
    if not getattr(samples, "is_nested", False):
        return None
    tensors = list(samples.unbind())
    if len(tensors) < 2:
        return None
    dims = [len(t.shape) for t in tensors]
    parts = []
    for index, tensor in enumerate(tensors):
        shape = tuple(int(n) for n in tensor.shape)
        kind = "video" if len(shape) == 5 else "audio" if len(shape) == 4 and 5 in dims else ""
        name = f"part {index}" + (f" ({kind})" if kind else "") + " " + "×".join(str(n) for n in shape)
        parts.append((name, math.prod(shape[1:])))
    return parts


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests, references); half/bfloat16/float32 latents accumulate in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32

@dataclass
class Trajectory:
    """A finished recording (host tensors, float64). Per-step arrays have N = steps rows, per-call M rows."""
    parameterization: str  # "flow" or "ve→flow"
    label: str
    dim: int
    batch: int
    status: str  # "complete" or "interrupted"
    t: torch.Tensor  # [N+1] flow time of the recorded points
    sigma: torch.Tensor  # [N+1] the sampler's own σ
    step_velocity_rms: torch.Tensor  # [N, B] ‖v‖/√d evaluated at each step start
    secant_sq: torch.Tensor  # [N, B] ‖v_i‖²/d of the secant velocity
    segment_length: torch.Tensor  # [N, B] ‖x_i − x_{i+1}‖/√d
    turn_cos: torch.Tensor  # [N−1, B] cos between consecutive secant velocities
    local_error: torch.Tensor  # [N−1, B] Heun–Euler local error estimate of step i (per √d)
    chord_sq: torch.Tensor  # [B] ‖c‖²/d
    call_t: torch.Tensor  # [M, B]
    call_velocity_rms: torch.Tensor  # [M, B]
    call_x0_drift_rms: torch.Tensor  # [M, B] ‖D_k − D_{k−1}‖/√d (0 for the first call)
    call_step: torch.Tensor  # [M] step index during which the call happened
    latents: list = field(default_factory=list)  # [(t, x_flow tensor)] when recorded
    extra: dict = field(default_factory=dict)
    part: str = ""  # the part of a multi-part latent these statistics describe ("" = the whole latent)
    # one Trajectory per part of a multi-part latent (same t, σ, call_t, call_step; dim = the part's elements
    # per sample; no latents); empty for a single-part latent
    parts: list = field(default_factory=list)

    @property
    def steps(self) -> int:
        return int(self.secant_sq.shape[0])

    @property
    def nfe(self) -> int:
        return int(self.call_step.shape[0])

    def warnings(self) -> list[str]:
        """Problems a chart should state next to the numbers (partial path, non-finite values)."""
        notes = []
        if self.status != "complete":
            notes.append(f"warning: '{self.label}' is {self.status} (partial path)")
        non_finite = sum(int((~torch.isfinite(t)).sum()) for t in
                         (self.call_velocity_rms, self.secant_sq, self.segment_length, self.chord_sq))
        if non_finite:
            notes.append(f"warning: '{self.label}' has {non_finite} non-finite values (skipped in charts)")
        return notes

    def validate(self, who: str) -> None:
        if self.steps < 1:
            raise ValueError(f"{who}: the trajectory '{self.label}' has no completed step "
                             f"(status {self.status}); record a sampling run with at least one step")


def straightness(trajectory: Trajectory) -> dict:
    """Path statistics per sample (lists) and aggregated over the batch (see the module docstring); for a
    multi-part latent ``parts`` holds the same statistics of each part (with its ``name`` and ``dim``)."""
    dt = (trajectory.t[:-1] - trajectory.t[1:])[:, None]
    span = float(dt.sum())
    kinetic = (dt * trajectory.secant_sq).sum(0)
    chord_energy = trajectory.chord_sq / span
    straight = kinetic - chord_energy
    path_length = trajectory.segment_length.sum(0)
    chord_length = trajectory.chord_sq.sqrt()
    turning = torch.arccos(trajectory.turn_cos.clamp(-1.0, 1.0)).nansum(0)
    per_step = dt * trajectory.secant_sq - dt * chord_energy[None]  # contributions to S (sum = S)

    def mean(t):
        return float(t.mean())

    return {
        "kinetic_energy": mean(kinetic),
        "straightness": mean(straight),
        "relative_straightness": mean(straight) / max(mean(chord_energy), 1e-300),
        "transport_efficiency": mean(chord_energy) / max(mean(kinetic), 1e-300),
        "path_over_chord": mean(path_length) / max(mean(chord_length), 1e-300),
        "turning_angle": mean(turning),
        "chord_sq": mean(trajectory.chord_sq),
        "span": span,
        "per_sample": {"kinetic_energy": kinetic.tolist(), "straightness": straight.tolist(),
                       "relative_straightness": (straight / chord_energy.clamp_min(1e-300)).tolist(),
                       "path_over_chord": (path_length / chord_length.clamp_min(1e-300)).tolist(),
                       "turning_angle": turning.tolist()},
        "per_step_contribution": per_step.mean(1).tolist(),
        "parts": [{"name": part.part, "dim": part.dim, **straightness(part)} for part in trajectory.parts],
    }


def trajectory_fields(raw: dict, chord_sq: torch.Tensor, dim: int, t: torch.Tensor, call_t: torch.Tensor) -> dict:
    """Raw host norms and dots of one recording (whole latent or one part: ``raw`` by kind, [k, B] each) →
    the per-dimension fields of :class:`Trajectory`."""
    batch = chord_sq.shape[0]
    root_dim = math.sqrt(dim)
    drift = raw["drift"]
    if len(drift) < len(raw["call"]):  # the first call has no predecessor
        drift = torch.cat([torch.zeros(1, batch, dtype=torch.float64), drift])
    dt = (t[:-1] - t[1:])[:, None]
    segment = raw["segment"]
    norms = segment.clamp_min(torch.finfo(torch.float64).tiny)
    return dict(
        dim=dim, chord_sq=chord_sq,
        step_velocity_rms=raw["velocity"] / root_dim,
        secant_sq=(segment / dt[:len(segment)]).pow(2) / dim,
        segment_length=segment / root_dim,
        turn_cos=raw["dots"] / (norms[1:] * norms[:-1]),
        local_error=0.5 * dt[:len(raw["change"])] * raw["change"] / root_dim,
        call_velocity_rms=raw["call"] / call_t / root_dim,
        call_x0_drift_rms=drift / root_dim)
