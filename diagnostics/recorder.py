"""Trajectory recording (pure torch, no ComfyUI imports): a :class:`TrajectoryRecorder` turns a sampling run
into a :class:`~.trajectory.Trajectory`.

A :class:`TrajectoryRecorder` is fed by two hooks that exist for *every* ComfyUI sampler: each model call
(x, σ, denoised) and each step callback (i, x, denoised). It never changes a tensor it is given, so sampling
with and without recording is bit-identical. By default it keeps only per-call / per-step scalars, as
device tensors (no host sync while sampling), and some latent-sized working memory while sampling, in one of two
ways chosen at the first call by the latent's size:

- small latents (a block fits :data:`DEFERRED_BUDGET_BYTES` = 1 MiB): one tensor of 4F + 8 latents for blocks of
  F ≤ 16 calls (half precision held in float32); the hooks only copy the model's inputs and outputs into it, and
  every F calls or steps one batched pass reduces the block to norms and dots (few dispatched operations per step);
- larger latents: every call and step is reduced in its hook, keeping between hooks only what the next one needs
  (:class:`_Carried`): copies of the previous step's point and of the previous segment (2 latents), and references
  to the first step's x, the previous step's D and the latest call's D, which ComfyUI's samplers hold anyway
  (k-diffusion's loops keep their latest D through the next model call; ComfyUI keeps the initial latent), else
  one latent each.

The scalars are copied to the host once, in :meth:`finish`, which releases the working memory: a finished recording
holds O(steps) numbers, nothing latent-sized (unless latents are recorded).

The recorded quantities, the flow-time conversion of VE models and the path statistics are described in
:mod:`.trajectory`.

Multi-part latents (ComfyUI ≥ 0.8 ``NestedTensor``, e.g. LTXAV video + audio): the sampler sees one flat
``[B, 1, N]`` tensor, the parts reshaped to ``[B, 1, n_p]`` and concatenated in order
(``comfy.utils.pack_latents``). Given the parts' names and element counts
(:func:`~.trajectory.latent_parts`), the recorder also reduces every quantity above over each part's slice
``[o_p, o_p + n_p)`` of the flattened sample, so each part gets the same statistics, per dimension of that part
(:attr:`Trajectory.parts`); the whole-latent statistics are computed exactly as for a single-part latent.
"""
from __future__ import annotations

from collections import deque

import torch

from .trajectory import Trajectory, accumulation_dtype, flatten_batch, trajectory_fields

DEFAULT_MAX_LATENTS = 64


def _norm(flat: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension ([B, d] → [B], [k, B, d] → [k, B]), accumulated in
    :func:`accumulation_dtype` (one kernel)."""
    return torch.linalg.vector_norm(flat, dim=-1, dtype=accumulation_dtype(flat))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = accumulation_dtype(a)
    if a.dtype != acc:
        a, b = a.to(acc), b.to(acc)
    return torch.linalg.vecdot(a, b, dim=-1)


DEFERRED_BUDGET_BYTES = 2**20  # the batched block's whole working tensor; latents it cannot hold are reduced at once
MAX_BLOCK = 16  # model calls / steps whose quantities are reduced together


def _sigma_column(sigmas: list) -> torch.Tensor:
    """σ tensors of shape [1] or [B] → one [len, 1 or B, 1] tensor that broadcasts over [len, B, d] rows."""
    shape = sigmas[0].shape
    if all(s.shape == shape for s in sigmas):
        return torch.stack(sigmas)[..., None]
    width = max(s.shape[0] for s in sigmas)
    return torch.stack([s if s.shape[0] == width else s.expand(width) for s in sigmas])[..., None]


def _progression(indices: list):
    """(start, stride) when the ints form an arithmetic progression with a positive stride (or are one int)."""
    if len(indices) == 1:
        return indices[0], 1
    stride = indices[1] - indices[0]
    if stride > 0 and all(b - a == stride for a, b in zip(indices, indices[1:])):
        return indices[0], stride
    return None


class _Rows:
    """The recorder's latent-sized working memory: one ``[4F + 8, B, d]`` tensor in the accumulation dtype,
    allocated at the first hook, in regions (views made once: indexing a tensor is itself a dispatched op):

    ``start`` the path's first point (for the chord); ``denoised`` [F + 1] the block's model outputs D after
    row 0, which carries the previous block's last; ``x`` [F + 2] the block's model inputs, turned into
    x_flow − D by the flush and then used as its scratch; ``velocity`` [F + 1] the block's step velocities
    after row 0 (the previous block's last); ``points`` [F + 3] the block's step points after rows 0–1 (the
    previous block's last two), room for the final point.

    F (the block, :meth:`block_for`) is :data:`MAX_BLOCK` for small latents, fewer where the tensor would pass
    :data:`DEFERRED_BUDGET_BYTES`; a latent for which not even F = 1 fits is not batched (the recorder reduces it at
    once, :class:`_Carried`). Batching pays on small latents, where it replaces ~10 dispatched operations per step
    by ~2; on large ones every operation is bandwidth-bound and a block would only cost memory.
    """

    @staticmethod
    def block_for(like: torch.Tensor) -> int:
        """F for a flattened latent like ``like`` within :data:`DEFERRED_BUDGET_BYTES`; 0 when no block fits."""
        latent_bytes = max(1, like.numel() * torch.finfo(accumulation_dtype(like)).bits // 8)
        return int(max(0, min(MAX_BLOCK, (DEFERRED_BUDGET_BYTES // latent_bytes - 8) // 4)))

    def __init__(self, like: torch.Tensor, block: int):
        dtype = accumulation_dtype(like)
        self.block = f = block
        self.all = torch.empty((4 * f + 8,) + tuple(like.shape), dtype=dtype, device=like.device)
        self.start = self.all[0]
        self.denoised = self.all[1:f + 2]
        self.x = self.all[f + 2:2 * f + 4]
        self.velocity = self.all[2 * f + 4:3 * f + 5]
        self.points = self.all[3 * f + 5:4 * f + 8]
        self.denoised_rows, self.x_rows = self.denoised.unbind(0), self.x.unbind(0)
        self.velocity_rows, self.point_rows = self.velocity.unbind(0), self.points.unbind(0)


def _held(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it owns its whole storage (a reference then keeps nothing else alive), else a copy."""
    if t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone()


class _Carried:
    """What the recorder keeps between hooks when it reduces every call and step at once (latents too large for a
    block, :meth:`_Rows.block_for`): the minimum the statistics need from one hook to the next, two latent copies
    and three references.

    Copies (in the accumulation dtype): ``point`` the previous step's point x_flow (for the next segment and the
    previous step velocity), ``segment`` the previous segment x_flow_{i−1} − x_flow_i (for the turning dot).
    References to tensors the recorder was given (:func:`_held`: a copy only where the tensor shares a larger
    storage): ``start`` the first step's x, with ``start_sigma`` (for the chord); ``step_denoised`` the D reported
    with the previous point, with its ``step_t`` (the previous step velocity (x_flow − D)/t is recomputed from
    ``point`` and it, the same operations as when it was first computed); ``denoised`` the latest call's D (for the
    drift). The references cost no memory while ComfyUI or the sampler holds them too — ComfyUI keeps the initial
    latent for the whole run, k-diffusion samplers keep their latest D through the next model call — and one latent
    each otherwise. (A sampler that changed a reported x or D in place afterwards would change what they read; the
    samplers of ComfyUI and of this pack make new tensors. The points, which a sampler is likelier to update in
    place, are copies.)
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.start = self.start_sigma = None
        self.point = self.segment = None
        self.step_denoised = self.step_t = None
        self.denoised = None


class TrajectoryRecorder:
    """Feed with :meth:`on_model_call` and :meth:`on_step`, close with :meth:`finish`.

    On a 2–3 ms model call the recorder's own work is what shows, so the hooks only copy: a model call its
    input and output into the next rows of a block (:class:`_Rows`), a step its point (and, when the callback
    does not report the latest model call's own x and D, its x_flow − D). Every F calls or steps, and in
    :meth:`finish`, one *flush* reduces the whole block with a few batched operations — x_flow − D and
    D − D_prev per call, per step the velocity (the call's x_flow − D over t when the callback reported that
    call, as k-diffusion samplers do right after a step's first call), its change, the displacement and the
    dot of consecutive displacements — keeping raw norms and dots as [k, B] device tensors (no host sync).
    Divisions by √d, by Δt and between norms happen once, vectorized, in :meth:`finish`, which also releases
    the working tensor. A latent whose block would not fit :data:`DEFERRED_BUDGET_BYTES` is reduced in the hooks
    themselves, with the same element-wise operations, keeping only :class:`_Carried` between them.

    ``parts`` (from :func:`~.trajectory.latent_parts`): (name, elements per sample) of each part of a multi-part
    latent, in packing order; every norm and dot is then also taken over each part's slice of the flattened latent
    (one more [k, B, parts] block of scalars per kind and flush), and :meth:`finish` adds one :class:`Trajectory`
    per part. None or a single part: whole-latent statistics only.
    """

    def __init__(self, flow: bool, sigmas, label: str = "", record_latents: bool = False,
                 max_latents: int = DEFAULT_MAX_LATENTS, parts: list[tuple[str, int]] | None = None):
        self.flow = flow
        self.sigmas = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
        self.label = label
        self.record_latents = record_latents
        self.max_latents = max_latents
        self.calls_sigma, self.calls_step = [], []  # per call: σ as the model got it, step index
        # [k, B] blocks of raw norms: per call ‖x_flow − D‖ and ‖D_k − D_{k−1}‖ (none for the first call), per
        # step ‖v_i‖ and ‖v_{i−1} − v_i‖, per segment ‖x_i − x_{i+1}‖, per pair of segments their dot
        self.call_norms, self.drift_norms = [], []
        self.velocity_norms, self.change_norms, self.segment_norms, self.segment_dots = [], [], [], []
        self._series = {"call": self.call_norms, "drift": self.drift_norms, "velocity": self.velocity_norms,
                        "change": self.change_norms, "segment": self.segment_norms, "dots": self.segment_dots}
        self.parts = [(str(name), int(count)) for name, count in parts] if parts and len(parts) > 1 else []
        if any(count < 1 for _, count in self.parts):
            raise ValueError(f"TrajectoryRecorder: every part of the latent needs at least one element, got "
                             f"{self.parts}")
        offsets = [0]
        for _, count in self.parts:
            offsets.append(offsets[-1] + count)
        self._part_bounds = list(zip(offsets[:-1], offsets[1:]))
        self._part_series = {kind: [] for kind in self._series}  # [k, B, parts] blocks, same kinds
        self.point_sigma: list[torch.Tensor] = []  # σ of each recorded point, 0-d device tensors: no host sync
        self.latents = []
        # recent calls: (id, data_ptr) of the denoised output, σ, call index, (id, data_ptr) of x, block, row
        self._recent_calls = deque(maxlen=8)
        self.current_step = 0
        self._rows: _Rows | None = None  # the batched block (small latents), or
        self._carried: _Carried | None = None  # the state between hooks when every call and step is reduced at once
        self._dim = self._batch = None
        self._sigma_grid = None
        self._block = 0  # counts flushes: a call's rows belong to the block it was written in
        self._pending_calls = 0
        self._pending_steps = []  # (σ, x row of the step's model call or None) per step point of the block
        self._carried_points = 0  # rows 0–1 of ``points`` hold this many previous points (≤ 2)
        self._velocity_carried = self._denoised_carried = self._start_written = False

    # -- conversions --------------------------------------------------------------------------------
    def _t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma if self.flow else sigma / (1 + sigma)

    def _buffers(self, flat: torch.Tensor) -> _Rows | None:
        """The block (None when the latent is reduced at once: then :attr:`_carried` is set), made at the first
        hook."""
        if self._rows is None and self._carried is None:
            if self._part_bounds and self._part_bounds[-1][1] != flat.shape[1]:
                raise ValueError(
                    f"TrajectoryRecorder '{self.label}': the latent's parts ({', '.join(n for n, _ in self.parts)}) "
                    f"hold {self._part_bounds[-1][1]} elements per sample, but the sampler's latent has "
                    f"{flat.shape[1]}")
            self._batch, self._dim = flat.shape
            block = _Rows.block_for(flat)
            if block:
                self._rows = _Rows(flat, block)
            else:
                self._carried = _Carried(accumulation_dtype(flat))
        return self._rows

    def _keep(self, kind: str, rows: torch.Tensor, other: torch.Tensor | None = None) -> None:
        """Keep the norms of ``rows`` over the last dimension (or, with ``other``, the dots of the two) as a
        [k, B] block of ``kind``, and for a multi-part latent those of each part's slice as a [k, B, parts]
        block."""
        self._series[kind].append(_norm(rows) if other is None else _dot(rows, other))
        if self._part_bounds:
            self._part_series[kind].append(torch.stack(
                [_norm(rows[..., a:b]) if other is None else _dot(rows[..., a:b], other[..., a:b])
                 for a, b in self._part_bounds], dim=-1))

    def _grid(self, like: torch.Tensor) -> torch.Tensor:
        if self._sigma_grid is None:  # one host→device copy per recording, not one per step
            self._sigma_grid = torch.tensor(self.sigmas, dtype=accumulation_dtype(like), device=like.device)
        return self._sigma_grid

    # -- hooks ----------------------------------------------------------------------------------------
    def on_model_call(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        flat, flat_denoised = flatten_batch(x), flatten_batch(denoised)
        rows = self._buffers(flat)
        if sigma.dim() != 1:
            sigma = sigma.reshape(-1)
        dtype = rows.all.dtype if rows is not None else self._carried.dtype
        if sigma.dtype != dtype or sigma.device != flat.device:
            sigma = sigma.to(device=flat.device, dtype=dtype)
        if rows is None:
            self._call_now(sigma, flat, flat_denoised)
            self.calls_sigma.append(sigma)
            self.calls_step.append(self.current_step)
            self._recent_calls.append(((id(denoised), denoised.data_ptr()), sigma, len(self.calls_step) - 1,
                                       (id(x), x.data_ptr()), 0, 0))
            return
        if self._pending_calls == rows.block:
            self._flush()
        row = self._pending_calls
        rows.x_rows[row].copy_(flat)  # x as given; x_flow − D at the flush
        rows.denoised_rows[row + 1].copy_(flat_denoised)
        self._pending_calls = row + 1
        self.calls_sigma.append(sigma)
        self.calls_step.append(self.current_step)
        self._recent_calls.append(((id(denoised), denoised.data_ptr()), sigma, len(self.calls_step) - 1,
                                   (id(x), x.data_ptr()), self._block, row))

    def _call_of_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor):
        """(σ, block, row) of the model call made at this very ``x`` that produced this ``denoised`` — where the
        sampler really evaluated (σ̂ with churn) — or None. The call that produced ``denoised`` (at this x or
        not: a look-ahead) and the ones after it belong to step i (callbacks follow a step's first call)."""
        output = (id(denoised), denoised.data_ptr())
        for produced, sigma, index, given, block, row in reversed(self._recent_calls):
            if produced == output:
                self.calls_step[index:] = [i] * (len(self.calls_step) - index)
                return (sigma, block, row) if given == (id(x), x.data_ptr()) else None
        return None

    def on_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """The step callback: ``x`` is the point at the start of step ``i`` (σ = sigmas[i])."""
        if i >= len(self.sigmas) - 1:
            return
        call = self._call_of_step(i, x, denoised)
        sigma = call[0] if call is not None else self._grid(x)[i:i + 1]
        flat = flatten_batch(x)
        rows = self._buffers(flat)
        if rows is None:
            self._step_now(sigma, flat, flatten_batch(denoised))
            self.point_sigma.append(sigma[0])
            self._keep_latent(sigma, flat)
            self.current_step = i
            return
        if len(self._pending_steps) == rows.block:
            self._flush()
        step = len(self._pending_steps)
        rows.point_rows[2 + step].copy_(flat)  # the sampler may later change ``x`` in place; x_flow at the flush
        if call is not None and call[1] == self._block:
            source = call[2]  # that call's x_flow − D, at this very x
        else:
            source = None
            velocity = rows.velocity_rows[1 + step]
            if self.flow:  # in the accumulation dtype, as a call's row
                velocity.copy_(flat).sub_(flatten_batch(denoised))
            else:
                torch.div(flat, (1 + sigma).reshape(-1, 1), out=velocity).sub_(flatten_batch(denoised))
        self._pending_steps.append((sigma, source))
        self.point_sigma.append(sigma[0])
        self._keep_latent(sigma, flat)
        self.current_step = i  # later calls belong to step i until the next callback claims its first call

    def _keep_latent(self, sigma: torch.Tensor, flat: torch.Tensor) -> None:
        if self.record_latents and len(self.latents) < self.max_latents:
            point = flat.to(accumulation_dtype(flat), copy=True)
            if not self.flow:
                point.div_((1 + sigma).reshape(-1, 1))
            self.latents.append((self._t(sigma.reshape(-1)[0]), point))

    # -- reduced at once (latents too large for a block) ----------------------------------------------
    def _flow_point(self, flat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_flow of ``flat`` at ``sigma`` ([1] or [B]) as a new tensor in the accumulation dtype."""
        if self.flow:
            return flat.to(self._carried.dtype, copy=True)
        return torch.div(flat, (1 + sigma).reshape(-1, 1))  # σ is in the accumulation dtype: so is the quotient

    def _call_now(self, sigma: torch.Tensor, flat: torch.Tensor, flat_denoised: torch.Tensor) -> None:
        """A model call's ‖x_flow − D‖ and ‖D − D_prev‖ (the block's operations on one row)."""
        carried = self._carried
        dtype = carried.dtype
        difference = (torch.sub(flat.to(dtype), flat_denoised) if self.flow
                      else torch.div(flat, (1 + sigma).reshape(-1, 1)).sub_(flat_denoised))
        self._keep("call", difference[None])
        if carried.denoised is not None:
            difference = torch.sub(flat_denoised.to(dtype), carried.denoised)
            self._keep("drift", difference[None])
        del difference
        carried.denoised = _held(flat_denoised)

    def _step_now(self, sigma: torch.Tensor, flat: torch.Tensor, flat_denoised: torch.Tensor) -> None:
        """A step's ‖v‖, ‖v_prev − v‖ and the segment from the previous point (the block's operations on one row);
        keeps what :class:`_Carried` lists."""
        carried = self._carried
        point = self._flow_point(flat, sigma)
        t = self._t(sigma).reshape(-1, 1)
        velocity = torch.sub(point, flat_denoised).div_(t)
        self._keep("velocity", velocity[None])
        if carried.step_denoised is not None:  # v_prev − v, v_prev recomputed from the previous point and D
            change = torch.sub(carried.point, carried.step_denoised).div_(carried.step_t).sub_(velocity)
            self._keep("change", change[None])
            del change
        del velocity
        carried.step_denoised, carried.step_t = _held(flat_denoised), t
        if carried.start is None:
            carried.start, carried.start_sigma = _held(flat), sigma
        self._advance(point)

    def _advance(self, point: torch.Tensor) -> None:
        """The segment from the previous point to ``point`` (norm, and its dot with the previous segment)."""
        carried = self._carried
        if carried.point is not None:
            segment = torch.sub(carried.point, point)
            self._keep("segment", segment[None])
            if carried.segment is not None:
                self._keep("dots", carried.segment[None], segment[None])
            carried.segment = segment
        carried.point = point

    def _carried_chord(self):
        """x_flow at the first step − the latest point, or None before the first step."""
        carried = self._carried
        if carried is None or carried.point is None:
            return None
        start = self._flow_point(carried.start, carried.start_sigma) if not self.flow else carried.start.to(
            carried.dtype)
        return start - carried.point

    # -- the batched work ---------------------------------------------------------------------------
    def _flush(self, final_sigma: torch.Tensor | None = None) -> None:
        """Reduce the block: its calls, then its steps (and the final point at ``points[2 + steps]`` when
        ``final_sigma`` is given); carry what the next block needs into the regions' first rows."""
        rows = self._rows
        calls, steps = self._pending_calls, self._pending_steps
        if calls:
            x = rows.x[:calls]
            if not self.flow:
                x.div_(1 + _sigma_column(self.calls_sigma[-calls:]))
            x.sub_(rows.denoised[1:calls + 1])
            self._keep("call", x)  # ÷ t in finish
        point_sigmas = [sigma for sigma, _ in steps] + ([final_sigma] if final_sigma is not None else [])
        sigma = _sigma_column(point_sigmas) if point_sigmas else None
        if steps:  # before the drift below, which reuses the x rows the velocities are read from
            self._step_velocities(rows, steps, self._t(sigma[:len(steps)]))
        if calls:
            first = 0 if self._denoised_carried else 1
            if calls > first:
                drift = torch.sub(rows.denoised[first + 1:calls + 1], rows.denoised[first:calls],
                                  out=rows.x[:calls - first])
                self._keep("drift", drift)
            rows.denoised_rows[0].copy_(rows.denoised_rows[calls])
            self._denoised_carried = True
        if point_sigmas:
            self._reduce_steps(rows, len(steps), sigma)
        self._pending_calls, self._pending_steps = 0, []
        self._block += 1

    def _step_velocities(self, rows: _Rows, steps: list, t: torch.Tensor) -> None:
        """v = (x_flow − D)/t into the steps' velocity rows: from the x rows of the calls the steps reported (one
        strided division when they are evenly spaced, as in a fixed-step sampler), else from the row the step
        wrote itself."""
        sources = [source for _, source in steps]
        progression = _progression(sources) if None not in sources else None
        if progression is not None:
            start, stride = progression
            torch.div(rows.x[start:start + stride * (len(steps) - 1) + 1:stride], t,
                      out=rows.velocity[1:1 + len(steps)])
            return
        for step, source in enumerate(sources):
            if source is None:
                rows.velocity_rows[1 + step].div_(t[step])
            else:
                torch.div(rows.x_rows[source], t[step], out=rows.velocity_rows[1 + step])

    def _reduce_steps(self, rows: _Rows, count: int, sigma: torch.Tensor) -> None:
        """Norms and dots of the block's step velocities and points (``sigma``: the points' σ, [n, 1 or B, 1])."""
        new_points = len(sigma)
        if not self.flow:
            rows.points[2:2 + new_points].div_(1 + sigma)
        if count:
            self._keep("velocity", rows.velocity[1:1 + count])
            carried = 1 if self._velocity_carried else 0
            if count + carried > 1:
                change = torch.sub(rows.velocity[1 - carried:count], rows.velocity[2 - carried:count + 1],
                                   out=rows.x[:count + carried - 1])
                self._keep("change", change)
            rows.velocity_rows[0].copy_(rows.velocity_rows[count])
            self._velocity_carried = True
        carried = self._carried_points
        window = rows.points[2 - carried:2 + new_points]
        if len(window) > 1:
            segments = torch.sub(window[:-1], window[1:], out=rows.x[:len(window) - 1])
            self._keep("segment", segments[max(carried - 1, 0):])  # the first may be counted already
            if len(segments) > 1:
                self._keep("dots", segments[:-1], segments[1:])
        if not self._start_written:
            rows.start.copy_(rows.point_rows[2])
            self._start_written = True
        if new_points >= 2:
            rows.points[0:2].copy_(rows.points[new_points:new_points + 2])
        else:
            rows.point_rows[0].copy_(rows.point_rows[1])
            rows.point_rows[1].copy_(rows.point_rows[2])
        self._carried_points = min(2, carried + new_points)

    def finish(self, x_final: torch.Tensor, interrupted: bool = False) -> Trajectory:
        """Close the path at the sampler's output (σ = sigmas[−1]), reduce the last block, copy everything to
        the host once and turn the raw norms and dots into the per-dimension statistics of
        :class:`Trajectory`."""
        final_sigma = None
        if self._rows is not None:
            if (self._pending_steps or self._carried_points) and not interrupted:
                final_sigma = self._grid(x_final)[-1:]
                flat = flatten_batch(x_final)
                self._rows.point_rows[2 + len(self._pending_steps)].copy_(flat)
                self.point_sigma.append(final_sigma[0])
                self._keep_latent(final_sigma, flat)
            self._flush(final_sigma)
        elif self._carried is not None and self._carried.point is not None and not interrupted:
            final_sigma = self._grid(x_final)[-1:]
            flat = flatten_batch(x_final)
            self.point_sigma.append(final_sigma[0])
            self._keep_latent(final_sigma, flat)
            self._advance(self._flow_point(flat, final_sigma))
        batch = self._batch or x_final.shape[0]
        chords = []  # [B] per-dimension squared chord of the whole latent, then [B, parts]
        chord = self._rows.start - self._rows.point_rows[1] if self._carried_points else self._carried_chord()
        if chord is not None:
            chords = [chord.pow(2).mean(dim=1)]
            if self._part_bounds:
                chords.append(torch.stack([chord[:, a:b].pow(2).mean(dim=1) for a, b in self._part_bounds], -1))
        del chord
        self._rows = self._carried = None
        dim = self._dim or flatten_batch(x_final).shape[1]

        kinds = list(self._series)
        blocks = ([block for kind in kinds for block in self._series[kind]]
                  + [block for kind in kinds for block in self._part_series[kind]] + chords)
        if blocks:  # one copy to the host for all of them
            flat = torch.cat([block.reshape(-1) for block in blocks]).double().cpu()
            host = iter([h.view(b.shape) for h, b in zip(flat.split([b.numel() for b in blocks]), blocks)])
        else:
            host = iter(())
        count = len(self._part_bounds)
        whole, per_part = {}, {}
        for kind in kinds:
            found = [next(host) for _ in self._series[kind]]
            whole[kind] = torch.cat(found) if found else torch.zeros(0, batch, dtype=torch.float64)
        for kind in kinds:
            found = [next(host) for _ in self._part_series[kind]]
            per_part[kind] = torch.cat(found) if found else torch.zeros(0, batch, count, dtype=torch.float64)
        chord_sq = next(host) if chords else torch.zeros(batch, dtype=torch.float64)
        part_chord_sq = next(host) if len(chords) > 1 else torch.zeros(batch, count, dtype=torch.float64)

        points = (torch.stack(self.point_sigma).double().cpu() if self.point_sigma
                  else torch.zeros(0, dtype=torch.float64))
        t = points if self.flow else points / (1 + points)
        call_sigma = _stacked_sigmas(self.calls_sigma, batch)
        call_t = call_sigma if self.flow else call_sigma / (1 + call_sigma)
        call_step = torch.tensor(self.calls_step, dtype=torch.long)
        shared = dict(parameterization="flow" if self.flow else "ve→flow", batch=batch,
                      status="interrupted" if interrupted else "complete", t=t, sigma=points, call_t=call_t,
                      call_step=call_step)
        parts = [Trajectory(label=self.label, part=name, **shared,
                            **trajectory_fields({kind: per_part[kind][..., p] for kind in kinds}, part_chord_sq[:, p],
                                          part_dim, t, call_t))
                 for p, (name, part_dim) in enumerate(self.parts)]
        return Trajectory(label=self.label, **shared, **trajectory_fields(whole, chord_sq, dim, t, call_t),
                          latents=[(float(t), latent.cpu()) for t, latent in self.latents], parts=parts)



def _stacked_sigmas(sigmas: list, width: int) -> torch.Tensor:
    """σ tensors of shape [B] or [1] (as the model got them) → host float64 [len, width]."""
    if not sigmas:
        return torch.zeros(0, width, dtype=torch.float64)
    return _sigma_column(sigmas)[..., 0].double().cpu()[:, :width].expand(-1, width)
