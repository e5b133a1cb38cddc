"""Trajectory recording and path statistics on the analytic model (exact velocity known in closed form)."""
import math

import pytest
import torch

from models.gaussian_mixture import GaussianMixture
from diagnostics import recorder as recorder_module
from samplers.runge_kutta import sample_rk
from diagnostics.recorder import TrajectoryRecorder
from diagnostics.trajectory import flatten_batch, straightness

DATA_END = 1e-8


@pytest.fixture(scope="module")
def mixture():
    generator = torch.Generator().manual_seed(3)
    return GaussianMixture.create(torch.randn(3, 6, generator=generator, dtype=torch.float64) * 1.5, 0.4)


def recording_denoiser(recorder, denoise):
    """``denoise`` as a k-diffusion model that reports every call to ``recorder``."""

    def denoiser(x, sigma, **_):
        denoised = denoise(x, sigma)
        recorder.on_model_call(x, sigma, denoised)
        return denoised

    return denoiser


def record(mixture, noise, sigmas, method="rk4", flow=True, record_latents=False, model=None):
    recorder = TrajectoryRecorder(flow, sigmas, label=method, record_latents=record_latents, max_latents=10_000)
    denoiser = recording_denoiser(recorder, model if model is not None else mixture.denoised)

    out = sample_rk(denoiser, noise, sigmas, method=method, data_end_sigma=DATA_END if flow else None,
                    callback=lambda info: recorder.on_step(info["i"], info["x"], info["denoised"]))
    return out, recorder.finish(out)


def exact_path_statistics(mixture, noise, steps=4000):
    """KE, S and L/C from the exact velocity along a dense RK4 path (trapezoid rule in t; the path length
    ``L = ∫‖v‖dt``, batch means as :func:`straightness` takes them)."""
    sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    points = []
    sample_rk(lambda x, s, **_: mixture.denoised(x, s), noise, sigmas, method="rk4", data_end_sigma=DATA_END,
              callback=lambda info: points.append(info["x"]))
    end = sample_rk(lambda x, s, **_: mixture.denoised(x, s), noise, sigmas, method="rk4", data_end_sigma=DATA_END)
    points.append(end)
    d = noise.shape[1]
    speed_sq = torch.stack([mixture.velocity(p, float(s)).pow(2).sum(1) / d for p, s in zip(points, sigmas)])
    chord = (noise - end)
    chord_energy = chord.pow(2).sum(1) / d
    kinetic = torch.trapezoid(speed_sq, dx=1.0 / steps, dim=0)
    length = torch.trapezoid(speed_sq.sqrt(), dx=1.0 / steps, dim=0)
    path_over_chord = float(length.mean() / chord_energy.sqrt().mean())
    return float(kinetic.mean()), float((kinetic - chord_energy).mean()), path_over_chord


def test_dense_recording_matches_the_exact_kinetic_energy_and_straightness(mixture):
    """Tolerance: secant velocities on 400 RK4 steps differ from the exact velocity by O(h²) ≈ 1e-5 relative;
    we allow 1e-3 of KE for both KE and S (S is a difference of two O(1) numbers)."""
    noise = torch.randn(16, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, trajectory = record(mixture, noise, torch.linspace(1, 0, 401, dtype=torch.float64))
    stats = straightness(trajectory)
    kinetic, straight, path_over_chord = exact_path_statistics(mixture, noise)
    assert stats["kinetic_energy"] == pytest.approx(kinetic, rel=1e-3)
    assert stats["straightness"] == pytest.approx(straight, abs=1e-3 * kinetic)
    assert straight > 0.05 * kinetic  # the mixture's paths are measurably curved
    assert stats["transport_efficiency"] == pytest.approx((kinetic - straight) / kinetic, rel=1e-3)
    assert stats["path_over_chord"] == pytest.approx(path_over_chord, rel=1e-4) and path_over_chord > 1.01


def test_straightness_equals_explicit_sum_and_ke_minus_chord(mixture):
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = torch.linspace(1, 0, 13, dtype=torch.float64)
    out, trajectory = record(mixture, noise, sigmas, method="heun", record_latents=True)
    points = [latent for _, latent in trajectory.latents]
    assert len(points) == 13
    chord = points[0] - points[-1]
    explicit = sum((1 / 12) * ((a - b) * 12 - chord).pow(2).sum(1) / 6 for a, b in zip(points, points[1:]))
    stats = straightness(trajectory)
    assert stats["straightness"] == pytest.approx(float(explicit.mean()), rel=1e-9)
    assert stats["straightness"] == pytest.approx(stats["kinetic_energy"] - stats["chord_sq"], rel=1e-9)
    assert sum(stats["per_step_contribution"]) == pytest.approx(stats["straightness"], rel=1e-9)


def test_recording_is_bit_neutral_and_counts_every_model_call(mixture):
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = torch.linspace(1, 0, 9, dtype=torch.float64)
    plain = sample_rk(lambda x, s, **_: mixture.denoised(x, s), noise, sigmas, method="rk4",
                      data_end_sigma=DATA_END)
    recorded, trajectory = record(mixture, noise, sigmas, method="rk4")
    assert torch.equal(plain, recorded)
    assert trajectory.nfe == 8 * 4 and trajectory.steps == 8
    assert torch.bincount(trajectory.call_step).tolist() == [4] * 8


def test_straight_paths_have_zero_straightness():
    """A single data point μ: every path x_σ = (1−σ)μ + σε is a straight line (v = ε − μ, constant)."""
    gaussian = GaussianMixture.create(torch.full((1, 5), 2.0, dtype=torch.float64), 0.0)
    noise = torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, trajectory = record(gaussian, noise, torch.linspace(1, 0, 9, dtype=torch.float64), method="euler")
    stats = straightness(trajectory)
    assert abs(stats["straightness"]) < 1e-12 * stats["kinetic_energy"]
    assert stats["transport_efficiency"] == pytest.approx(1.0, abs=1e-12)
    assert stats["path_over_chord"] == pytest.approx(1.0, abs=1e-12)
    assert stats["turning_angle"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("reduced_at_once", [False, True])
def test_a_polyline_on_a_circular_arc_has_its_closed_form_statistics(reduced_at_once, monkeypatch):
    """Points x_i = R(cos θ_i, sin θ_i), θ_i = Θ·i/N, at t_i = 1 − i/N (batch: radii 1 and 3, d = 2): N chords
    of length s = 2R sin(Θ/2N) and the chord 2R sin(Θ/2), so L/C = N sin(Θ/2N)/sin(Θ/2), the turning angle is
    (N−1)Θ/N, KE = Σ Δt (s/Δt)²/d = N² s²/d and S = KE − ‖c‖²/(T d) with T = 1 (batch means)."""
    if reduced_at_once:  # the recorder's other mode: every call and step reduced in its hook
        monkeypatch.setattr(recorder_module, "DEFERRED_BUDGET_BYTES", 0)
    steps, arc = 12, 2.0
    radii = torch.tensor([1.0, 3.0], dtype=torch.float64)
    sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    angles = arc * torch.arange(steps + 1, dtype=torch.float64) / steps
    points = [torch.stack([radii * torch.cos(a), radii * torch.sin(a)], dim=1) for a in angles]
    recorder = TrajectoryRecorder(True, sigmas)
    for i in range(steps):
        denoised = torch.zeros_like(points[i])
        recorder.on_model_call(points[i], sigmas[i].expand(2), denoised)
        recorder.on_step(i, points[i], denoised)
    stats = straightness(recorder.finish(points[-1]))
    ratio = steps * math.sin(arc / (2 * steps)) / math.sin(arc / 2)
    assert stats["path_over_chord"] == pytest.approx(ratio, rel=1e-12) and ratio > 1.03
    assert stats["per_sample"]["path_over_chord"] == pytest.approx([ratio, ratio], rel=1e-12)
    assert stats["turning_angle"] == pytest.approx((steps - 1) * arc / steps, rel=1e-12)
    mean_r2 = float(radii.pow(2).mean())
    kinetic = steps ** 2 * 4 * mean_r2 * math.sin(arc / (2 * steps)) ** 2 / 2
    assert stats["kinetic_energy"] == pytest.approx(kinetic, rel=1e-12)
    assert stats["straightness"] == pytest.approx(kinetic - 4 * mean_r2 * math.sin(arc / 2) ** 2 / 2, rel=1e-10)


def test_ve_trajectories_are_converted_to_flow_time(mixture):
    """The same exact path run in VE space (x_ve = x_flow/(1−t), σ_ve = t/(1−t)) records the same statistics."""
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t_grid = torch.linspace(0.98, 0.0, 201, dtype=torch.float64)
    sigma_ve = t_grid / (1 - t_grid)

    def ve_model(x, sigma):
        s = sigma.reshape(-1, 1)
        return mixture.denoised(x / (1 + s), s.reshape(-1) / (1 + s.reshape(-1)))

    x_ve = noise / (1 - 0.98)
    flow_start = (1 - 0.98) * mixture.sample(8, torch.Generator().manual_seed(6)) + 0.98 * noise
    _, flow = record(mixture, flow_start, t_grid, method="rk4")
    _, ve = record(mixture, flow_start / (1 - 0.98), sigma_ve, method="rk4", flow=False, model=ve_model)
    assert ve.parameterization == "ve→flow"
    torch.testing.assert_close(ve.t, t_grid, rtol=1e-12, atol=1e-12)
    a, b = straightness(flow), straightness(ve)
    assert b["kinetic_energy"] == pytest.approx(a["kinetic_energy"], rel=2e-2)
    assert b["path_over_chord"] == pytest.approx(a["path_over_chord"], rel=2e-2)
    del x_ve


def test_packed_and_nested_latents_are_flattened_per_sample():
    packed = torch.arange(24.0).reshape(2, 12)
    assert flatten_batch(packed).shape == (2, 12)
    nested = torch.nested.nested_tensor([torch.ones(2, 3, 4), torch.ones(2, 5, 1)])
    assert flatten_batch(nested).shape == (2, 17)


def test_default_recording_memory_is_o_steps_not_o_latents(mixture):
    noise = torch.randn(2, 6, dtype=torch.float64)
    _, small = record(mixture, noise, torch.linspace(1, 0, 11, dtype=torch.float64), method="euler")
    assert small.latents == []
    sizes = [t.numel() for t in (small.secant_sq, small.segment_length, small.call_velocity_rms)]
    assert sizes == [10 * 2, 10 * 2, 10 * 2]


@pytest.mark.parametrize("flow", [True, False])
def test_hooks_work_in_one_preallocated_tensor_and_finish_releases_it(mixture, flow):
    """The hooks allocate their latent-sized working memory once (one [4F + 8, B, d] tensor, whatever the step
    count) and write nothing latent-sized anywhere else; after finish the recorder keeps no latent-sized tensor."""
    sigmas = torch.linspace(0.9, 0.05, 41, dtype=torch.float64)
    recorder = TrajectoryRecorder(flow, sigmas)
    noise = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    working = set()

    def latent_sized(obj):
        found = []
        if isinstance(obj, torch.Tensor):
            found = [obj] if obj.dim() >= 2 and obj.shape[-1] == noise.shape[1] else []  # [.., d]
        elif isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque":
            found = [t for item in obj for t in latent_sized(item)]
        return found

    denoiser = recording_denoiser(recorder, mixture.denoised)

    def on_step(info):
        recorder.on_step(info["i"], info["x"], info["denoised"])
        working.add(recorder._rows.all.data_ptr())
        assert recorder._rows.all.shape == (4 * recorder_module.MAX_BLOCK + 8, 3, 6)
        assert all(not latent_sized(value) for name, value in vars(recorder).items() if name != "_rows")

    out = sample_rk(denoiser, noise, sigmas, method="heun", callback=on_step)
    trajectory = recorder.finish(out)
    assert trajectory.steps == 40 and trajectory.nfe == 80
    assert len(working) == 1
    assert all(not latent_sized(value) for value in vars(recorder).values())


@pytest.mark.parametrize("flow", [True, False])
def test_without_a_block_the_hooks_carry_two_latent_copies_and_references_to_given_tensors(mixture, monkeypatch,
                                                                                          flow):
    """A latent too large for a block is reduced in the hooks: between them the recorder holds copies of the previous
    point and segment only (its own latent-sized tensors), and references to tensors the sampler gave it (the first
    x, the latest step's and call's D); finish releases everything."""
    monkeypatch.setattr(recorder_module, "DEFERRED_BUDGET_BYTES", 0)
    sigmas = torch.linspace(0.9, 0.05, 11, dtype=torch.float64)
    recorder = TrajectoryRecorder(flow, sigmas)
    noise = torch.randn(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    given = []  # every x and D the sampler handed to the recorder

    def denoise(x, sigma, **_):
        denoised = mixture.denoised(x, sigma)
        given.extend([x, denoised])
        recorder.on_model_call(x, sigma, denoised)
        return denoised

    def latent_sized(obj):
        if isinstance(obj, torch.Tensor):
            return [obj] if obj.dim() >= 2 and obj.shape[-1] == noise.shape[1] else []
        if isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque":
            return [t for item in obj for t in latent_sized(item)]
        return []

    def on_step(info):
        given.extend([info["x"], info["denoised"]])
        recorder.on_step(info["i"], info["x"], info["denoised"])
        carried = recorder._carried
        assert recorder._rows is None and carried is not None
        assert all(not latent_sized(value) for name, value in vars(recorder).items() if name != "_carried")
        own = [t for t in (carried.point, carried.segment) if t is not None]
        assert len(own) == (1 if info["i"] == 0 else 2)
        given_storages = {t.untyped_storage().data_ptr() for t in given}
        assert all(t.untyped_storage().data_ptr() not in given_storages for t in own)  # copies
        for reference in (carried.start, carried.step_denoised, carried.denoised):
            assert reference.untyped_storage().data_ptr() in given_storages  # the sampler's own tensors
        assert latent_sized(list(vars(carried).values())) == [t for t in (
            carried.start, carried.point, carried.segment, carried.step_denoised, carried.denoised) if t is not None]

    out = sample_rk(denoise, noise, sigmas, method="heun", callback=on_step)
    trajectory = recorder.finish(out)
    assert trajectory.steps == 10 and trajectory.nfe == 20
    assert recorder._carried is None
    assert all(not latent_sized(value) for value in vars(recorder).values())


def test_the_block_shrinks_with_the_latent_to_stay_within_the_working_memory_budget():
    """Small latents are reduced MAX_BLOCK calls at a time; larger ones in smaller blocks so that the working
    tensor stays within DEFERRED_BUDGET_BYTES, down to one call per block (12 latents); a latent whose 12 rows
    would pass the budget gets no block (it is reduced in the hooks)."""
    budget = recorder_module.DEFERRED_BUDGET_BYTES
    for floats, block in [(64, recorder_module.MAX_BLOCK), (budget // 4 // 20, 3), (budget // 4 // 12, 1),
                          (budget // 4 // 12 + 1, 0), (budget // 4, 0)]:
        like = torch.zeros(1, floats)
        assert recorder_module._Rows.block_for(like) == block, floats
        if block:
            rows = recorder_module._Rows(like, block)
            assert rows.all.shape == (4 * block + 8, 1, floats)
            assert rows.all.numel() * 4 <= budget


@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "nesterov", "dopri5"])
def test_statistics_do_not_depend_on_where_the_blocks_end(mixture, monkeypatch, flow, method):
    """Flushing after every 1, 2 or 3 calls/steps carries the previous D, velocity and two points across block
    boundaries, and reducing every call and step in its hook carries what :class:`_Carried` lists: every statistic
    equals the one-block recording (float64, to rounding)."""
    from samplers.optimizers import sample_nesterov

    sigmas = torch.linspace(0.95, 0.0, 12, dtype=torch.float64) if flow else torch.linspace(14.0, 0.0, 12,
                                                                                              dtype=torch.float64)
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * (1 if flow else 14)

    def recording(block):
        monkeypatch.setattr(recorder_module, "MAX_BLOCK", block)
        recorder = TrajectoryRecorder(flow, sigmas, record_latents=True)
        denoiser = recording_denoiser(recorder, lambda x, s: mixture.denoised(x, s if flow else s / (1 + s)))
        callback = lambda info: recorder.on_step(info["i"], info["x"], info["denoised"])  # noqa: E731
        if method == "nesterov":
            out = sample_nesterov(denoiser, noise, sigmas, callback=callback)
        else:
            out = sample_rk(denoiser, noise, sigmas, method=method, callback=callback,
                            data_end_sigma=DATA_END if flow else None)
        return recorder.finish(out)

    whole = recording(64)
    assert whole.steps >= 4 and len(whole.latents) == whole.steps + 1
    for block in (0, 1, 2, 3):  # 0: no block, every call and step reduced in its hook
        split = recording(block)
        for name in ("t", "step_velocity_rms", "secant_sq", "segment_length", "turn_cos", "local_error", "chord_sq",
                     "call_t", "call_velocity_rms", "call_x0_drift_rms", "call_step"):
            torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=1e-12, atol=1e-300,
                                       msg=lambda m: f"{name}, block {block}: {m}")
        for (t_split, latent_split), (t_whole, latent_whole) in zip(split.latents, whole.latents):
            assert t_split == t_whole and torch.equal(latent_split, latent_whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("method", ["heun", "nesterov"])
def test_reducing_in_the_hooks_equals_the_block_in_single_and_half_precision(mixture, monkeypatch, dtype, flow,
                                                                              method):
    """Single and half precision latents (accumulated in float32): the statistics reduced in the hooks equal the
    block's to 1e-6 relative (the same element-wise operations; only the norms' summation may group differently)."""
    from samplers.optimizers import sample_nesterov

    sigmas = torch.linspace(0.95, 0.0, 10) if flow else torch.linspace(14.0, 0.0, 10)
    noise = (torch.randn(2, 6, generator=torch.Generator().manual_seed(4)) * (1 if flow else 14)).to(dtype)

    def recording(budget):
        monkeypatch.setattr(recorder_module, "DEFERRED_BUDGET_BYTES", budget)
        recorder = TrajectoryRecorder(flow, sigmas)
        model = lambda x, s: mixture.denoised(x.double(), s if flow else s / (1 + s)).float()  # noqa: E731
        denoiser = recording_denoiser(recorder, model)
        callback = lambda info: recorder.on_step(info["i"], info["x"], info["denoised"])  # noqa: E731
        if method == "nesterov":
            out = sample_nesterov(denoiser, noise, sigmas, callback=callback)
        else:
            out = sample_rk(denoiser, noise, sigmas, method=method, callback=callback,
                            data_end_sigma=1e-4 if flow else None)
        assert (recorder._rows is None) == (budget == 0)
        return recorder.finish(out)

    block, hooks = recording(2**20), recording(0)
    for name in ("step_velocity_rms", "secant_sq", "segment_length", "turn_cos", "local_error", "chord_sq",
                 "call_velocity_rms", "call_x0_drift_rms"):
        torch.testing.assert_close(getattr(hooks, name), getattr(block, name), rtol=1e-6, atol=0,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("method", ["euler", "nesterov"])
def test_step_velocity_and_local_error_equal_the_velocities_at_the_recorded_points(mixture, method):
    """Euler calls back with the latest model call's own x and D (the recorder reuses that call's x − D);
    Nesterov reports its look-ahead D at another x (the recorder computes (x − D)/t from the callback). Both
    must give ‖v‖ and the Heun–Euler local error of the model's velocities at the recorded points."""
    from samplers.optimizers import sample_nesterov

    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sigmas = torch.linspace(0.95, 0.05, 10, dtype=torch.float64)
    recorder = TrajectoryRecorder(True, sigmas)
    reported = []

    denoiser = recording_denoiser(recorder, mixture.denoised)

    def on_step(info):
        recorder.on_step(info["i"], info["x"], info["denoised"])
        reported.append((info["x"].clone(), info["denoised"].clone(), float(sigmas[info["i"]])))

    sampler = sample_rk if method == "euler" else sample_nesterov
    options = {"method": "euler"} if method == "euler" else {}
    out = sampler(denoiser, noise, sigmas, callback=on_step, **options)
    trajectory = recorder.finish(out)
    velocities = [(x - d) / t for x, d, t in reported]
    expected_speed = torch.stack([v.norm(dim=1) for v in velocities]) / math.sqrt(6)
    torch.testing.assert_close(trajectory.step_velocity_rms, expected_speed, rtol=1e-12, atol=0)
    dt = sigmas[:-1] - sigmas[1:]
    expected_error = torch.stack([0.5 * dt[i] * (velocities[i + 1] - velocities[i]).norm(dim=1)
                                  for i in range(len(velocities) - 1)]) / math.sqrt(6)
    torch.testing.assert_close(trajectory.local_error, expected_error, rtol=1e-12, atol=0)
