"""Per-part statistics of a multi-part latent (ComfyUI ≥ 0.8 NestedTensor, e.g. LTXAV video + audio).

The sampler sees one flat [B, 1, N] latent: the parts flattened per sample and concatenated in order
(comfy.utils.pack_latents). Here a two-part latent is sampled with a part-wise separable model — part 0 moves
on straight lines (a constant denoiser: the flow ODE path is a straight line to it), part 1 curves (the exact
denoiser of a Gaussian mixture) — and the recorder's per-part statistics must equal those of the recorder run
on each part alone. Pure torch: no ComfyUI needed."""
import json
import math

import pytest
import torch

from models.gaussian_mixture import GaussianMixture
from samplers.runge_kutta import sample_rk
from diagnostics.export import trajectory_json, trajectory_rows
from diagnostics.recorder import TrajectoryRecorder
from diagnostics.trajectory import Trajectory, flatten_batch, latent_parts, straightness

BATCH = 3
STRAIGHT_SHAPE = (BATCH, 2, 1, 2, 2)  # a 5-D "video" part: 8 elements per sample
CURVED_SHAPE = (BATCH, 2, 1, 3)  # a 4-D "audio" part: 6 elements per sample
FIELDS = ("t", "sigma", "step_velocity_rms", "secant_sq", "segment_length", "turn_cos", "local_error", "chord_sq",
          "call_t", "call_velocity_rms", "call_x0_drift_rms", "call_step")
SCALARS = ("kinetic_energy", "straightness", "relative_straightness", "transport_efficiency", "path_over_chord",
           "turning_angle", "chord_sq", "span")


class PartsLatent:
    """The duck-typed multi-part latent :func:`latent_parts` documents: a true ``is_nested`` and ``unbind()``
    returning the parts as [B, ...] tensors (what ComfyUI's NestedTensor offers)."""

    is_nested = True

    def __init__(self, *tensors):
        self.tensors = list(tensors)

    def unbind(self):
        return self.tensors


@pytest.fixture(scope="module")
def problem():
    generator = torch.Generator().manual_seed(11)
    straight_dim, curved_dim = math.prod(STRAIGHT_SHAPE[1:]), math.prod(CURVED_SHAPE[1:])
    target = torch.randn(BATCH, straight_dim, generator=generator, dtype=torch.float64)
    mixture = GaussianMixture.create(torch.randn(3, curved_dim, generator=generator, dtype=torch.float64) * 2.0,
                                     0.3)
    noise = torch.randn(BATCH, 1, straight_dim + curved_dim, generator=generator, dtype=torch.float64)
    return target, mixture, noise, straight_dim


def part_denoisers(problem, flow):
    """(straight, curved) denoisers on [B, 1, n] slices; for VE runs (x = x0 + σε) the mixture is evaluated
    at the flow point x/(1+σ), t = σ/(1+σ)."""
    target, mixture, _, _ = problem

    def straight(x, sigma):
        return target[:, None, :].expand_as(x).clone()

    def curved(x, sigma):
        sigma = float(sigma.reshape(-1)[0])
        point, time = (x, sigma) if flow else (x / (1 + sigma), sigma / (1 + sigma))
        return mixture.denoised(point[:, 0], time)[:, None, :]

    return straight, curved


def run(flow, method, sigmas, noise, denoise, parts=None):
    recorder = TrajectoryRecorder(flow, sigmas, label=method, parts=parts)

    def model(x, sigma, **_):
        denoised = denoise(x, sigma)
        recorder.on_model_call(x, sigma, denoised)
        return denoised

    out = sample_rk(model, noise, sigmas, method=method,  # last step: first order, to the denoised point
                    callback=lambda info: recorder.on_step(info["i"], info["x"], info["denoised"]))
    return recorder.finish(out)


def grid(flow, steps=9):
    return (torch.linspace(0.97, 0.0, steps + 1, dtype=torch.float64) if flow
            else torch.linspace(12.0, 0.0, steps + 1, dtype=torch.float64))


def recordings(problem, flow, method):
    """The two-part run recorded with and without parts, and each part run alone."""
    _, _, noise, split = problem
    noise = noise if flow else noise * 12.0
    straight, curved = part_denoisers(problem, flow)

    def joint(x, sigma):
        return torch.cat([straight(x[..., :split], sigma), curved(x[..., split:], sigma)], dim=-1)

    parts = latent_parts(PartsLatent(torch.zeros(STRAIGHT_SHAPE), torch.zeros(CURVED_SHAPE)))
    sigmas = grid(flow)
    with_parts = run(flow, method, sigmas, noise, joint, parts)
    without = run(flow, method, sigmas, noise, joint)
    alone = [run(flow, method, sigmas, noise[..., :split].clone(), straight),
             run(flow, method, sigmas, noise[..., split:].clone(), curved)]
    return with_parts, without, alone


@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_each_part_gets_the_statistics_of_the_recorder_run_on_that_part_alone(problem, flow, method):
    with_parts, _, alone = recordings(problem, flow, method)
    assert [part.part for part in with_parts.parts] == ["part 0 (video) 3×2×1×2×2", "part 1 (audio) 3×2×1×3"]
    for part, reference in zip(with_parts.parts, alone):
        assert isinstance(part, Trajectory) and part.dim == reference.dim and part.label == method
        assert part.parts == [] and part.latents == []
        for name in FIELDS:
            torch.testing.assert_close(getattr(part, name), getattr(reference, name), rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{part.part}, {name}: {m}")
        got, expected = straightness(part), straightness(reference)
        for name in SCALARS:
            assert got[name] == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name
        for name, values in expected["per_sample"].items():
            assert got["per_sample"][name] == pytest.approx(values, rel=1e-10, abs=1e-12), name
        assert got["per_step_contribution"] == pytest.approx(expected["per_step_contribution"], rel=1e-10,
                                                             abs=1e-12)
    # the known dynamics: part 0 moves on straight lines (S = 0, L/C = 1), part 1 curves
    straight_stats, curved_stats = (straightness(part) for part in with_parts.parts)
    assert straight_stats["relative_straightness"] == pytest.approx(0.0, abs=1e-9)
    assert straight_stats["path_over_chord"] == pytest.approx(1.0, abs=1e-9)
    assert curved_stats["relative_straightness"] > 1e-3 and curved_stats["path_over_chord"] > 1.0 + 1e-4


@pytest.mark.parametrize("flow", [True, False])
def test_the_whole_latent_statistics_are_the_same_with_or_without_parts(problem, flow):
    with_parts, without, _ = recordings(problem, flow, "heun")
    assert without.parts == [] and len(with_parts.parts) == 2
    for name in FIELDS + ("dim", "batch", "status", "parameterization"):
        value, expected = getattr(with_parts, name), getattr(without, name)
        assert torch.equal(value, expected) if isinstance(value, torch.Tensor) else value == expected, name
    stats, reference = straightness(with_parts), straightness(without)
    assert reference["parts"] == [] and [part["name"] for part in stats["parts"]] == [
        part.part for part in with_parts.parts]
    assert {key: value for key, value in stats.items() if key != "parts"} == {
        key: value for key, value in reference.items() if key != "parts"}
    # the whole-latent KE is the dimension-weighted mean of the parts' (squared norms add over the parts)
    weighted = sum(part["dim"] * part["kinetic_energy"] for part in stats["parts"]) / with_parts.dim
    assert weighted == pytest.approx(stats["kinetic_energy"], rel=1e-12)


def test_per_part_statistics_are_per_sample(problem):
    with_parts, _, _ = recordings(problem, True, "euler")
    steps, calls = with_parts.steps, with_parts.nfe
    for part in with_parts.parts:
        assert part.chord_sq.shape == (BATCH,)
        assert part.secant_sq.shape == part.step_velocity_rms.shape == (steps, BATCH)
        assert part.call_velocity_rms.shape == (calls, BATCH)
        per_sample = straightness(part)["per_sample"]
        assert all(len(values) == BATCH for values in per_sample.values())
        assert part.t is with_parts.t and part.call_step is with_parts.call_step


def test_latent_parts_names_and_counts_the_parts_in_packing_order():
    video, audio = torch.randn(2, 4, 3, 5, 6), torch.randn(2, 8, 7, 16)
    latent = PartsLatent(video, audio)
    parts = latent_parts(latent)
    assert parts == [("part 0 (video) 2×4×3×5×6", 360), ("part 1 (audio) 2×8×7×16", 896)]
    flat = flatten_batch(latent)  # the per-sample order of comfy.utils.pack_latents: parts concatenated
    assert flat.shape == (2, 360 + 896)
    assert torch.equal(flat[:, :360].reshape(video.shape), video)
    assert torch.equal(flat[:, 360:].reshape(audio.shape), audio)
    assert latent_parts(torch.zeros(2, 4, 8, 8)) is None  # a plain latent (ComfyUI 0.3.x)
    assert latent_parts(PartsLatent(video)) is None  # one part: nothing beyond the whole-latent statistics
    assert latent_parts(PartsLatent(torch.zeros(1, 3, 4), torch.zeros(1, 5))) == [("part 0 1×3×4", 12),
                                                                                  ("part 1 1×5", 5)]


def test_parts_that_do_not_add_up_to_the_latent_are_rejected():
    recorder = TrajectoryRecorder(True, [1.0, 0.5, 0.0], label="demo", parts=[("a", 3), ("b", 4)])
    x = torch.zeros(2, 1, 8)
    with pytest.raises(ValueError, match=r"TrajectoryRecorder 'demo': the latent's parts \(a, b\) hold 7 elements "
                                         r"per sample, but the sampler's latent has 8"):
        recorder.on_model_call(x, torch.ones(2), x)
    with pytest.raises(ValueError, match="at least one element"):
        TrajectoryRecorder(True, [1.0, 0.0], parts=[("a", 3), ("b", 0)])


def test_a_single_part_adds_nothing_and_part_blocks_hold_scalars_only(problem):
    _, _, noise, split = problem
    straight, _ = part_denoisers(problem, True)
    single = run(True, "euler", grid(True), noise[..., :split].clone(), straight, parts=[("only", split)])
    assert single.parts == []
    recorder = TrajectoryRecorder(True, grid(True, 20), parts=[("a", 5), ("b", 9)])
    x = torch.randn(BATCH, 1, 14, dtype=torch.float64)
    for i in range(20):
        denoised = x * 0.5
        recorder.on_model_call(x, torch.full((BATCH,), float(recorder.sigmas[i])), denoised)
        recorder.on_step(i, x, denoised)
        x = x * 0.9
    blocks = [block for kind in recorder._part_series.values() for block in kind]
    assert blocks and all(block.shape[1:] == (BATCH, 2) for block in blocks)
    trajectory = recorder.finish(x, interrupted=True)
    assert trajectory.status == "interrupted" and [part.status for part in trajectory.parts] == ["interrupted"] * 2
    assert [part.dim for part in trajectory.parts] == [5, 9]


def test_export_rows_and_json_hold_each_step_and_each_part(problem):
    """The Export node's CSV rows: one per step with the batch means of that step (and ``part{p}_`` columns per
    part), the model calls counted per step; the JSON: the same rows, the statistics and each part's series."""
    with_parts, _, _ = recordings(problem, True, "heun")
    rows = trajectory_rows(with_parts)
    # heun: 2 calls per step, 1 on the last (no data_end_sigma: a first-order step to σ = 0)
    assert len(rows) == with_parts.steps == 9 and sum(row["model_calls"] for row in rows) == with_parts.nfe == 17
    assert [row["model_calls"] for row in rows] == [2] * 8 + [1]
    for i, row in enumerate(rows):
        assert (row["step"], row["sigma"], row["t_next"]) == (i, float(with_parts.sigma[i]), float(with_parts.t[i + 1]))
        assert row["segment_length"] == pytest.approx(float(with_parts.segment_length[i].mean()), rel=1e-15)
        for p, part in enumerate(with_parts.parts):
            assert row[f"part{p}_secant_velocity_sq"] == pytest.approx(float(part.secant_sq[i].mean()), rel=1e-15)
    assert rows[-1]["local_error"] == ""  # the last step has no following step start to compare with
    exported = json.loads(json.dumps(trajectory_json(with_parts)))
    assert exported["per_step"] == rows and exported["nfe"] == 17 and exported["parameterization"] == "flow"
    assert exported["statistics"]["path_over_chord"] == straightness(with_parts)["path_over_chord"]
    assert [part["name"] for part in exported["parts"]] == [part.part for part in with_parts.parts]
    assert [len(part["per_call"]["velocity_rms"]) for part in exported["parts"]] == [17, 17]
