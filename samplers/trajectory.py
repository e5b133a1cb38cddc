"""Trajectory recording and path statistics (pure torch).

A :class:`TrajectoryRecorder` is fed by two hooks that exist for *every* ComfyUI sampler: each model call
(x, σ, denoised) and each step callback (i, x, denoised). It never changes a tensor it is given, so sampling
with and without recording is bit-identical. By default it keeps only per-call / per-step scalars, as
device tensors, plus five latent-sized buffers (start point, previous point, previous displacement,
previous step-start velocity, previous denoised) and, while sampling, four latent-sized working buffers
that the hooks reuse instead of allocating temporaries; the scalars are copied to the host once, in
:meth:`finish`, which also drops the working buffers.

Common parameterization (MISSION.md): flow models are recorded as they are (``t = σ``); VE models
(EPS/V/EDM in ComfyUI's sampler space, ``x = x0 + σ_ve ε``) are converted to flow time
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
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

DEFAULT_MAX_LATENTS = 64


def flatten_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] (or a nested tensor of several [B, ...] latents) → [B, features]."""
    if getattr(x, "is_nested", False):
        return torch.cat([part.reshape(part.shape[0], -1) for part in x.unbind()], dim=1)
    return x.reshape(x.shape[0], -1)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests, references); half/bfloat16/float32 latents accumulate in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(like.shape, dtype=dtype, device=like.device)


def _norm(flat: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm [B], accumulated in :func:`accumulation_dtype` (one kernel)."""
    return torch.linalg.vector_norm(flat, dim=1, dtype=accumulation_dtype(flat))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = accumulation_dtype(a)
    if a.dtype != acc:
        a, b = a.to(acc), b.to(acc)
    return torch.linalg.vecdot(a, b, dim=1)


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
    """Path statistics per sample (lists) and aggregated over the batch (see the module docstring)."""
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
                       "path_over_chord": (path_length / chord_length.clamp_min(1e-300)).tolist(),
                       "turning_angle": turning.tolist()},
        "per_step_contribution": per_step.mean(1).tolist(),
    }


class TrajectoryRecorder:
    """Feed with :meth:`on_model_call` and :meth:`on_step`, close with :meth:`finish`.

    The hooks do the fewest tensor operations they can (a norm or dot product per statistic, ~10 small ops
    per step on one model call) and keep raw norms and dots; divisions by √d, by Δt and between norms are
    done once, vectorized, in :meth:`finish` — on a 2 ms model call the hooks are otherwise what shows.
    """

    def __init__(self, flow: bool, sigmas, label: str = "", record_latents: bool = False,
                 max_latents: int = DEFAULT_MAX_LATENTS):
        self.flow = flow
        self.sigmas = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
        self.label = label
        self.record_latents = record_latents
        self.max_latents = max_latents
        # per call: flow time [B], ‖x_flow − D‖ [B], ‖D_k − D_{k−1}‖ [B], step index
        self.calls_t, self.calls_velocity_norm, self.calls_drift_norm, self.calls_step = [], [], [], []
        # per step: ‖v‖ at the step start, ‖v_i − v_{i−1}‖, ‖x_i − x_{i+1}‖, ⟨x_{i−1} − x_i, x_i − x_{i+1}⟩
        self.step_velocity_norm, self.velocity_change_norm, self.segment_norm, self.segment_dot = [], [], [], []
        self.point_sigma: list[torch.Tensor] = []  # 0-d device tensors: no host sync while sampling
        self.latents = []
        self._recent_calls = deque(maxlen=8)  # (id, data_ptr, σ tensor, call index) of recent denoised outputs
        self.current_step = 0
        self._start = self._point = self._displacement = self._step_velocity = self._denoised = None
        self._dim = self._batch = None
        self._sigma_grid = None
        self._call_work = self._spare_point = self._spare_velocity = self._spare_displacement = None

    # -- conversions --------------------------------------------------------------------------------
    def _t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma if self.flow else sigma / (1 + sigma)

    # -- hooks ----------------------------------------------------------------------------------------
    # The hooks write into latent-sized buffers they own and reuse, one spare per role, instead of allocating
    # temporaries on every call: on large CPU latents each fresh allocation costs page faults.
    def on_model_call(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        sigma = sigma.reshape(-1).to(device=x.device, dtype=accumulation_dtype(x))
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        flat, flat_denoised = flatten_batch(x.detach()), flatten_batch(denoised)
        work = self._call_work
        if work is None:
            work = self._call_work = _empty(flat, self._flow_dtype(flat, sigma, flat_denoised))
        if self.flow:
            torch.sub(flat, flat_denoised, out=work)
        else:
            torch.div(flat, (1 + sigma).reshape(-1, 1), out=work).sub_(flat_denoised)
        self.calls_t.append(self._t(sigma))
        self.calls_velocity_norm.append(_norm(work))  # ÷ t in finish
        if self._denoised is None:
            self.calls_drift_norm.append(None)
            self._denoised = flat_denoised.detach().clone()
        else:
            self.calls_drift_norm.append(_norm(torch.sub(flat_denoised, self._denoised, out=work)))
            self._denoised.copy_(flat_denoised)
        self.calls_step.append(self.current_step)
        self._recent_calls.append((id(denoised), denoised.data_ptr(), sigma, len(self.calls_step) - 1))

    def _sigma_of_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """Where the sampler really evaluated (σ̂ with churn, adaptive σ): the call that produced this
        denoised. That call and the ones after it belong to step i (callbacks follow a step's first call)."""
        for ident, pointer, sigma, index in reversed(self._recent_calls):
            if ident == id(denoised) and pointer == denoised.data_ptr():
                self.calls_step[index:] = [i] * (len(self.calls_step) - index)
                return sigma[0]
        return self._grid(x)[i]

    def _grid(self, like: torch.Tensor) -> torch.Tensor:
        if self._sigma_grid is None:  # one host→device copy per recording, not one per step
            self._sigma_grid = torch.tensor(self.sigmas, dtype=accumulation_dtype(like), device=like.device)
        return self._sigma_grid

    def on_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """The step callback: ``x`` is the point at the start of step ``i`` (σ = sigmas[i])."""
        if i >= len(self.sigmas) - 1:
            return
        sigma = self._sigma_of_step(i, x, denoised).to(accumulation_dtype(x))
        point, t = self._owned_flow_point(x, sigma), self._t(sigma)
        flat_denoised = flatten_batch(denoised)
        velocity = self._spare_velocity
        if velocity is None:
            velocity = _empty(point, torch.promote_types(torch.result_type(point, flat_denoised), t.dtype))
        torch.sub(point, flat_denoised, out=velocity).div_(t.reshape(-1, 1))
        previous = self._step_velocity
        if previous is not None:
            self.velocity_change_norm.append(_norm(previous.sub_(velocity)))  # ‖v_{i−1} − v_i‖ = ‖v_i − v_{i−1}‖
        self._spare_velocity = previous
        self.step_velocity_norm.append(_norm(velocity))
        self._step_velocity = velocity
        self._advance(point, t, sigma)
        self.current_step = i  # later calls belong to step i until the next callback claims its first call

    def _flow_dtype(self, flat: torch.Tensor, sigma: torch.Tensor, other: torch.Tensor | None = None):
        """dtype of x_flow (and of x_flow − other) as the out-of-place expressions would produce it."""
        dtype = flat.dtype if self.flow else torch.result_type(flat, (1 + sigma).reshape(-1, 1))
        return dtype if other is None else torch.promote_types(dtype, other.dtype)

    def _owned_flow_point(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_flow [B, d] in a buffer of the recorder's own (the sampler may later write into ``x`` in place)."""
        flat = flatten_batch(x.detach())
        point, self._spare_point = self._spare_point, None
        if point is None:
            point = _empty(flat, self._flow_dtype(flat, sigma))
        if self.flow:
            return point.copy_(flat)
        return torch.div(flat, (1 + sigma).reshape(-1, 1), out=point)

    def _advance(self, point: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor) -> None:
        """Move the path to ``point`` (an owned buffer)."""
        if self._dim is None:
            self._batch, self._dim = point.shape
        if self._point is None:
            self._start = point
        else:
            displacement = self._spare_displacement
            if displacement is None:
                displacement = torch.empty_like(point)
            torch.sub(self._point, point, out=displacement)
            self.segment_norm.append(_norm(displacement))
            if self._displacement is not None:
                self.segment_dot.append(_dot(displacement, self._displacement))
            self._spare_displacement, self._displacement = self._displacement, displacement
            if self._point is not self._start:
                self._spare_point = self._point
        self._point = point
        self.point_sigma.append(sigma)
        if self.record_latents and len(self.latents) < self.max_latents:
            self.latents.append((t, point.clone()))

    def finish(self, x_final: torch.Tensor, interrupted: bool = False) -> Trajectory:
        """Close the path at the sampler's output (σ = sigmas[−1]), copy everything to the host once and turn
        the raw norms and dots into the per-dimension statistics of :class:`Trajectory`."""
        if self._point is not None and not interrupted:
            sigma = self._grid(x_final)[-1]
            self._advance(self._owned_flow_point(x_final, sigma), self._t(sigma), sigma)
        self._call_work = self._spare_point = self._spare_velocity = self._spare_displacement = None
        batch = self._batch or x_final.shape[0]
        dim = self._dim or flatten_batch(x_final).shape[1]
        root_dim = math.sqrt(dim)
        empty = torch.zeros(0, batch, dtype=torch.float64)

        def stack(values):
            return torch.stack(values).double().cpu() if values else empty.clone()

        chord_sq = ((self._start - self._point).to(accumulation_dtype(self._start)).pow(2).mean(dim=1).double().cpu()
                    if self._start is not None else torch.zeros(batch, dtype=torch.float64))
        points = (torch.stack(self.point_sigma).double().cpu() if self.point_sigma
                  else torch.zeros(0, dtype=torch.float64))
        t = points if self.flow else points / (1 + points)
        dt = (t[:-1] - t[1:])[:, None]
        segment = stack(self.segment_norm)
        change = stack(self.velocity_change_norm)
        norms = segment.clamp_min(torch.finfo(torch.float64).tiny)
        drift = [torch.zeros_like(self.calls_velocity_norm[0]) if d is None else d for d in self.calls_drift_norm]
        call_t = stack(self.calls_t)
        return Trajectory(
            parameterization="flow" if self.flow else "ve→flow", label=self.label, dim=dim, batch=batch,
            status="interrupted" if interrupted else "complete", t=t, sigma=points,
            step_velocity_rms=stack(self.step_velocity_norm) / root_dim,
            secant_sq=(segment / dt[:len(segment)]).pow(2) / dim,
            segment_length=segment / root_dim,
            turn_cos=stack(self.segment_dot) / (norms[1:] * norms[:-1]),
            local_error=0.5 * dt[:len(change)] * change / root_dim,
            chord_sq=chord_sq, call_t=call_t, call_velocity_rms=stack(self.calls_velocity_norm) / call_t / root_dim,
            call_x0_drift_rms=stack(drift) / root_dim,
            call_step=torch.tensor(self.calls_step, dtype=torch.long),
            latents=[(float(t), latent.cpu()) for t, latent in self.latents])
