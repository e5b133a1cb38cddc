"""Export of a recorded trajectory: one row of batch means per step (the CSV) and the whole recording as a
JSON-able dict (pure Python + torch, no ComfyUI imports)."""
from __future__ import annotations

from .trajectory import Trajectory, straightness


def _step_means(trajectory: Trajectory, i: int, prefix: str = "") -> dict:
    """Batch means of step ``i``'s statistics (velocity at the step start, secant velocity², segment length,
    local error), keys prefixed with ``prefix``."""
    return {
        prefix + "velocity_rms": float(trajectory.step_velocity_rms[i].mean())
        if i < len(trajectory.step_velocity_rms) else "",
        prefix + "secant_velocity_sq": float(trajectory.secant_sq[i].mean()),
        prefix + "segment_length": float(trajectory.segment_length[i].mean()),
        prefix + "local_error": float(trajectory.local_error[i].mean()) if i < len(trajectory.local_error) else "",
    }


def trajectory_rows(trajectory: Trajectory) -> list[dict]:
    """One CSV row per step (batch means); a multi-part latent adds the same columns per part, prefixed
    ``part{p}_`` (p as in the part's name, listed under ``parts`` in the JSON)."""
    rows = []
    for i in range(trajectory.steps):
        row = {"step": i, "sigma": float(trajectory.sigma[i]), "t": float(trajectory.t[i]),
               "t_next": float(trajectory.t[i + 1]), **_step_means(trajectory, i),
               "model_calls": int((trajectory.call_step == i).sum())}
        for p, part in enumerate(trajectory.parts):
            row.update(_step_means(part, i, f"part{p}_"))
        rows.append(row)
    return rows


def trajectory_json(trajectory: Trajectory) -> dict:
    """The recording as a JSON-able dict: identity (label, parameterization, status, sizes), the path statistics
    (:func:`~.trajectory.straightness`), σ and t of the points, the per-step rows (:func:`trajectory_rows`), the
    per-call series, each part's per-call series and ``extra``."""
    stats = straightness(trajectory)
    return {
        "label": trajectory.label, "parameterization": trajectory.parameterization, "status": trajectory.status,
        "dim": trajectory.dim, "batch": trajectory.batch, "steps": trajectory.steps, "nfe": trajectory.nfe,
        "statistics": stats, "sigma": trajectory.sigma.tolist(), "t": trajectory.t.tolist(),
        "per_step": trajectory_rows(trajectory),
        "per_call": {"t": trajectory.call_t.tolist(), "velocity_rms": trajectory.call_velocity_rms.tolist(),
                     "x0_drift_rms": trajectory.call_x0_drift_rms.tolist(), "step": trajectory.call_step.tolist()},
        # a multi-part latent: each part's per-call series (its path statistics are in statistics["parts"],
        # its per-step means in the part{p}_ columns of per_step)
        "parts": [{"name": part.part, "dim": part.dim,
                   "per_call": {"velocity_rms": part.call_velocity_rms.tolist(),
                                "x0_drift_rms": part.call_x0_drift_rms.tolist()}} for part in trajectory.parts],
        "extra": trajectory.extra,
    }
