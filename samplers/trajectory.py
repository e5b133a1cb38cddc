"""Trajectory recording and path statistics (pure torch).

A :class:`TrajectoryRecorder` is fed by two hooks that exist for *every* ComfyUI sampler: each model call
(x, σ, denoised) and each step callback (i, x, denoised). It never changes a tensor it is given, so sampling
with and without recording is bit-identical. By default it keeps only per-call / per-step scalars, as
device tensors; while sampling it also holds nine latents of working memory in one tensor, allocated at the
first call, which the hooks write into instead of allocating temporaries (latents of half precision are
held in float32). The scalars are copied to the host once, in :meth:`finish`, which releases the working
memory: a finished recording holds O(steps) numbers, nothing latent-sized (unless latents are recorded).

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
    """[B, ...] (or a nested tensor of several [B, ...] latents) → [B, features], without autograd history."""
    if x.requires_grad:
        x = x.detach()
    if getattr(x, "is_nested", False):
        return torch.cat([part.reshape(part.shape[0], -1) for part in x.unbind()], dim=1)
    return x.reshape(x.shape[0], -1)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests, references); half/bfloat16/float32 latents accumulate in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _norm(flat: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension ([B, d] → [B], [k, B, d] → [k, B]), accumulated in
    :func:`accumulation_dtype` (one kernel)."""
    return torch.linalg.vector_norm(flat, dim=-1, dtype=accumulation_dtype(flat))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = accumulation_dtype(a)
    if a.dtype != acc:
        a, b = a.to(acc), b.to(acc)
    return torch.linalg.vecdot(a, b, dim=-1)


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


@dataclass
class _Parity:
    """Views of one parity's rows in the recorder's working tensor (see :class:`_Rows`)."""
    velocity: torch.Tensor
    segment: torch.Tensor
    step_block: torch.Tensor  # the step's change, velocity and segment rows, adjacent
    call_block: torch.Tensor  # a call's x_flow − D and drift rows, adjacent
    drift: torch.Tensor
    velocity_only: torch.Tensor  # [1, B, d] view of ``velocity`` (first step: nothing else to normalize)
    rolled: bool  # the blocks hold their rows rolled by one against (change, velocity, segment) / (velocity, drift)
    other: "_Parity | None" = None


class _Rows:
    """The recorder's latent-sized working memory: one ``[9, B, d]`` tensor in the accumulation dtype, with the
    views the hooks use made once (indexing a tensor is itself a dispatched operation).

    Layout ``[V_B, D_B, X, V_A, D_A, START, P_1, P_2, DENOISED]``. A step writes the parity (A or B) the previous
    step did not — the other still holds the previous velocity and displacement — and normalizes its change,
    velocity and displacement rows with one call: rows 2:5 for A, 0:3 for B. X holds a model call's x_flow − D
    until the step reads it, then the velocity change; the call's D − D_prev goes into the free parity's row
    next to X (V_A or D_B), so one norm covers both. The first point stays in START (for the chord), later
    points alternate between P_1 and P_2; DENOISED keeps the previous call's D for the drift.
    """

    def __init__(self, like: torch.Tensor):
        self.all = torch.empty((9,) + tuple(like.shape), dtype=accumulation_dtype(like), device=like.device)
        v_b, d_b, self.x, v_a, d_a, self.start, p_1, p_2, self.denoised = self.all.unbind(0)
        self.points = (self.start, p_1, p_2)
        self.x_only = self.all[2:3]
        a = _Parity(v_a, d_a, self.all[2:5], self.all[2:4], v_a, self.all[3:4], rolled=False)
        b = _Parity(v_b, d_b, self.all[0:3], self.all[1:3], d_b, self.all[0:1], rolled=True)
        a.other, b.other = b, a
        self.first = a


class TrajectoryRecorder:
    """Feed with :meth:`on_model_call` and :meth:`on_step`, close with :meth:`finish`.

    On a 2–3 ms model call the recorder's own work is what shows, so the hooks do as few tensor operations as
    they can: every latent-sized intermediate lives in one pre-allocated tensor (:class:`_Rows`) whose rows
    are laid out so that the quantities needing a norm are adjacent and one ``vector_norm`` covers them — per
    model call ``x_flow − D`` and ``D − D_prev`` (one norm) and a copy of ``D``; per step the point, the
    velocity, the velocity change and the displacement (one norm) and one dot product. When the step callback
    reports the latest model call's own input and output (k-diffusion samplers call back right after a step's
    first call), the step velocity is that call's ``(x_flow − D)/t``, already in a row. Raw norms and dots are
    kept; divisions by √d, by Δt and between norms happen once, vectorized, in :meth:`finish`, which also
    releases the working tensor.
    """

    def __init__(self, flow: bool, sigmas, label: str = "", record_latents: bool = False,
                 max_latents: int = DEFAULT_MAX_LATENTS):
        self.flow = flow
        self.sigmas = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
        self.label = label
        self.record_latents = record_latents
        self.max_latents = max_latents
        # per call: σ as the model got it, step index; the first call's ‖x_flow − D‖ [1, B], then per call
        # [‖x_flow − D‖, ‖D_k − D_{k−1}‖] [2, B] (rows rolled by one where the flag says so)
        self.calls_sigma, self.calls_step = [], []
        self.first_call_norm, self.call_norms, self.call_rolled = None, [], []
        # per step: the first step's ‖v‖ [1, B], then [‖v_{i−1} − v_i‖, ‖v_i‖, ‖x_{i−1} − x_i‖] [3, B] (rolled
        # by one where flagged); ⟨x_{i−1} − x_i, x_i − x_{i+1}⟩ [B]
        self.first_step_norm, self.step_norms, self.step_rolled, self.segment_dot = None, [], [], []
        self.point_sigma: list[torch.Tensor] = []  # σ of each recorded point, 0-d device tensors: no host sync
        self.latents = []
        # recent calls: (id, data_ptr) of the denoised output, σ tensor, call index, (id, data_ptr) of x
        self._recent_calls = deque(maxlen=8)
        self._call_in_x = None  # index of the call whose x_flow − D row X still holds (None once a step used X)
        self.current_step = 0
        self._rows: _Rows | None = None
        self._dim = self._batch = None
        self._sigma_grid = None
        self._previous: _Parity | None = None  # rows holding the previous step's velocity and displacement
        self._point_count = 0

    # -- conversions --------------------------------------------------------------------------------
    def _t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma if self.flow else sigma / (1 + sigma)

    def _buffers(self, flat: torch.Tensor) -> _Rows:
        if self._rows is None:
            self._batch, self._dim = flat.shape
            self._rows = _Rows(flat)
        return self._rows

    def _write_flow_point(self, out: torch.Tensor, flat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.flow:
            return out.copy_(flat)
        return torch.div(flat, (1 + sigma).reshape(-1, 1), out=out)

    # -- hooks ----------------------------------------------------------------------------------------
    def on_model_call(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        flat, flat_denoised = flatten_batch(x), flatten_batch(denoised)
        rows = self._buffers(flat)
        if sigma.dim() != 1:
            sigma = sigma.reshape(-1)
        if sigma.dtype != rows.all.dtype or sigma.device != rows.all.device:
            sigma = sigma.to(device=rows.all.device, dtype=rows.all.dtype)
        self._write_flow_point(rows.x, flat, sigma).sub_(flat_denoised)
        if self.calls_step:
            free = rows.first if self._previous is None else self._previous.other
            torch.sub(flat_denoised, rows.denoised, out=free.drift)
            self.call_norms.append(_norm(free.call_block))  # ÷ t in finish
            self.call_rolled.append(free.rolled)
        else:
            self.first_call_norm = _norm(rows.x_only)
        rows.denoised.copy_(flat_denoised)
        self.calls_sigma.append(sigma)
        self.calls_step.append(self.current_step)
        self._call_in_x = len(self.calls_step) - 1
        self._recent_calls.append(((id(denoised), denoised.data_ptr()), sigma, self._call_in_x,
                                   (id(x), x.data_ptr())))

    def _call_of_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor):
        """(σ, index) of the model call made at this very ``x`` that produced this ``denoised`` — where the
        sampler really evaluated (σ̂ with churn) — or None. The call that produced ``denoised`` (at this x or
        not: a look-ahead) and the ones after it belong to step i (callbacks follow a step's first call)."""
        output = (id(denoised), denoised.data_ptr())
        for produced, sigma, index, given in reversed(self._recent_calls):
            if produced == output:
                self.calls_step[index:] = [i] * (len(self.calls_step) - index)
                return (sigma, index) if given == (id(x), x.data_ptr()) else None
        return None

    def _grid(self, like: torch.Tensor) -> torch.Tensor:
        if self._sigma_grid is None:  # one host→device copy per recording, not one per step
            self._sigma_grid = torch.tensor(self.sigmas, dtype=accumulation_dtype(like), device=like.device)
        return self._sigma_grid

    def on_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """The step callback: ``x`` is the point at the start of step ``i`` (σ = sigmas[i])."""
        if i >= len(self.sigmas) - 1:
            return
        call = self._call_of_step(i, x, denoised)
        sigma = call[0] if call is not None else self._grid(x)[i:i + 1]
        flat = flatten_batch(x)
        rows = self._buffers(flat)
        previous = self._previous
        current = rows.first if previous is None else previous.other
        point = self._next_point(flat, sigma)
        t = self._t(sigma).reshape(-1, 1)
        if call is not None and call[1] == self._call_in_x:
            torch.div(rows.x, t, out=current.velocity)  # that call's x_flow − D, at this very x
        else:
            torch.sub(point, flatten_batch(denoised), out=current.velocity).div_(t)
        if previous is None:
            self.first_step_norm = _norm(current.velocity_only)
        else:
            torch.sub(previous.velocity, current.velocity, out=rows.x)  # v_{i−1} − v_i
            self._call_in_x = None
            torch.sub(rows.points[self._previous_point_index()], point, out=current.segment)
            self.step_norms.append(_norm(current.step_block))
            self.step_rolled.append(current.rolled)
            if len(self.step_norms) > 1:
                self.segment_dot.append(_dot(current.segment, previous.segment))
        self._previous = current
        self.point_sigma.append(sigma[0])
        self._keep_latent(sigma, point)
        self.current_step = i  # later calls belong to step i until the next callback claims its first call

    def _point_index(self, count: int) -> int:
        """Row (in ``_Rows.points``) of the ``count``-th point: the first stays in START, later ones alternate."""
        return 0 if count == 0 else 1 + (count - 1) % 2

    def _previous_point_index(self) -> int:
        return self._point_index(self._point_count - 2)

    def _next_point(self, flat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_flow in the recorder's own row (the sampler may later change ``x`` in place)."""
        out = self._rows.points[self._point_index(self._point_count)]
        self._point_count += 1
        return self._write_flow_point(out, flat, sigma)

    def _keep_latent(self, sigma: torch.Tensor, point: torch.Tensor) -> None:
        if self.record_latents and len(self.latents) < self.max_latents:
            self.latents.append((self._t(sigma.reshape(-1)[0]), point.clone()))

    def finish(self, x_final: torch.Tensor, interrupted: bool = False) -> Trajectory:
        """Close the path at the sampler's output (σ = sigmas[−1]), copy everything to the host once and turn
        the raw norms and dots into the per-dimension statistics of :class:`Trajectory`."""
        final_norm = final_dot = None
        if self._previous is not None and not interrupted:
            sigma = self._grid(x_final)[-1:]
            point = self._next_point(flatten_batch(x_final), sigma)
            segment = torch.sub(self._rows.points[self._previous_point_index()], point,
                                out=self._previous.other.segment)
            final_norm = _norm(segment)
            if self.step_norms:
                final_dot = _dot(segment, self._previous.segment)
            self.point_sigma.append(sigma[0])
            self._keep_latent(sigma, point)
        batch = self._batch or x_final.shape[0]
        chord_sq = torch.zeros(batch, dtype=torch.float64)
        if self._point_count:
            last = self._rows.points[self._point_index(self._point_count - 1)]
            chord_sq = (self._rows.start - last).pow(2).mean(dim=1).double().cpu()
        self._rows = self._previous = None
        dim = self._dim or flatten_batch(x_final).shape[1]
        root_dim = math.sqrt(dim)
        empty = torch.zeros(0, batch, dtype=torch.float64)

        def stack(values):
            return torch.stack(values).double().cpu() if values else empty.clone()

        change, step_velocity, segment = _unrolled(self.step_norms, self.step_rolled, 3, batch)
        if self.first_step_norm is not None:
            step_velocity = torch.cat([self.first_step_norm.double().cpu(), step_velocity])
        call_velocity, drift = _unrolled(self.call_norms, self.call_rolled, 2, batch)
        if self.first_call_norm is not None:
            call_velocity = torch.cat([self.first_call_norm.double().cpu(), call_velocity])
            drift = torch.cat([torch.zeros(1, batch, dtype=torch.float64), drift])
        dots = stack(self.segment_dot)
        if final_norm is not None:
            segment = torch.cat([segment, final_norm.double().cpu()[None]])
            if final_dot is not None:
                dots = torch.cat([dots, final_dot.double().cpu()[None]])
        points = (torch.stack(self.point_sigma).double().cpu() if self.point_sigma
                  else torch.zeros(0, dtype=torch.float64))
        t = points if self.flow else points / (1 + points)
        dt = (t[:-1] - t[1:])[:, None]
        norms = segment.clamp_min(torch.finfo(torch.float64).tiny)
        call_sigma = _stacked_sigmas(self.calls_sigma, batch)
        call_t = call_sigma if self.flow else call_sigma / (1 + call_sigma)
        return Trajectory(
            parameterization="flow" if self.flow else "ve→flow", label=self.label, dim=dim, batch=batch,
            status="interrupted" if interrupted else "complete", t=t, sigma=points,
            step_velocity_rms=step_velocity / root_dim,
            secant_sq=(segment / dt[:len(segment)]).pow(2) / dim,
            segment_length=segment / root_dim,
            turn_cos=dots / (norms[1:] * norms[:-1]),
            local_error=0.5 * dt[:len(change)] * change / root_dim,
            chord_sq=chord_sq, call_t=call_t, call_velocity_rms=call_velocity / call_t / root_dim,
            call_x0_drift_rms=drift / root_dim,
            call_step=torch.tensor(self.calls_step, dtype=torch.long),
            latents=[(float(t), latent.cpu()) for t, latent in self.latents])


def _unrolled(blocks: list, rolled: list, rows: int, batch: int) -> tuple:
    """[k, B] norm blocks (some with rows rolled by one) → one host float64 [len, B] tensor per row."""
    if not blocks:
        return (torch.zeros(0, batch, dtype=torch.float64),) * rows
    stacked = torch.stack(blocks).double().cpu()
    flags = torch.tensor(rolled)[:, None, None]
    return torch.where(flags, stacked.roll(1, dims=1), stacked).unbind(1)


def _stacked_sigmas(sigmas: list, width: int) -> torch.Tensor:
    """σ tensors of shape [B] or [1] (as the model got them) → host float64 [len, width]."""
    if not sigmas:
        return torch.zeros(0, width, dtype=torch.float64)
    if all(s.shape == sigmas[0].shape for s in sigmas):
        return torch.stack(sigmas).double().cpu()[:, :width].expand(-1, width)
    return torch.stack([s[:width].expand(width) for s in sigmas]).double().cpu()
