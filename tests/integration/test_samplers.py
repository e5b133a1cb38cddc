"""Every FlowScope sampler and schedule through the real ComfyUI: dropdowns, SAMPLER nodes, bad input, cancel."""
import json
import threading
import time
import uuid

import pytest
import torch

from samplers import SAMPLERS
from scripts.comfy_server import PromptFailed, error_messages
from tests.integration.prompts import (custom_sampler_prompt, images_to_latent_scale, ksampler_prompt,
                                       with_saved_latent)

pytestmark = pytest.mark.integration
MODELS = [("digits-flow", "simple"), ("digits-diffusion", "karras")]
DIGIT = 5
BATCH = 8  # images made by each planning-node test; at least MIN_ACCURACY of them must classify as DIGIT
MIN_ACCURACY = 0.75


def generated_digits(comfy, prompt):
    return images_to_latent_scale(comfy.output_images(comfy.run(prompt), "8"))


def test_fs_euler_is_bit_identical_to_comfyui_euler(comfy):
    latents = {}
    for name in ("euler", "fs_euler"):
        prompt = with_saved_latent(ksampler_prompt("digits-flow", sampler=name, steps=10, seed=7,
                                                   prefix=f"bit_{name}"), f"bit_{name}")
        latents[name] = comfy.output_latents(comfy.run(prompt), "9")[0]
    assert latents["euler"].shape == (2, 3, 8, 8)
    assert torch.equal(latents["euler"], latents["fs_euler"])


@pytest.mark.parametrize("model_name,scheduler", MODELS)
def test_every_dropdown_sampler_makes_digits(comfy, digit_classifier, model_name, scheduler):
    accuracies = {}
    for name in SAMPLERS:
        pixels = generated_digits(comfy, ksampler_prompt(model_name, digit=str(DIGIT), batch=2, cfg=2.5, steps=12,
                                                         sampler=name, scheduler=scheduler,
                                                         prefix=f"dd_{model_name}_{name}"))
        assert pixels.shape == (2, 3, 8, 8) and torch.isfinite(pixels).all()
        accuracies[name] = digit_classifier.accuracy(pixels, torch.full((2,), DIGIT))
    assert all(accuracy >= 0.5 for accuracy in accuracies.values()), accuracies
    assert sum(accuracies.values()) / len(accuracies) >= 0.85, accuracies


SAMPLER_NODES = {
    "rk4": {"class_type": "FlowScopeSamplerRungeKutta", "inputs": {"method": "rk4"}},
    "midpoint": {"class_type": "FlowScopeSamplerRungeKutta", "inputs": {"method": "midpoint"}},
    "dopri5": {"class_type": "FlowScopeSamplerAdaptive", "inputs": {
        "method": "dopri5", "rtol": 1e-3, "atol": 1e-4, "error_norm": "batch", "max_nfe": 400, "nfe_budget": 0}},
    "bosh3_budget": {"class_type": "FlowScopeSamplerAdaptive", "inputs": {
        "method": "bosh3", "rtol": 1e-3, "atol": 1e-4, "error_norm": "per_sample", "max_nfe": 400,
        "nfe_budget": 60}},
    "ab3": {"class_type": "FlowScopeSamplerAdamsBashforth", "inputs": {"order": 3}},  # warm_start: default
    "ab4_lower_order": {"class_type": "FlowScopeSamplerAdamsBashforth", "inputs": {
        "order": 4, "warm_start": "lower_order"}},
    "heavy_ball": {"class_type": "FlowScopeSamplerOptimizer", "inputs": {
        "kind": "heavy_ball", "beta": 0.5, "gamma": 2.0, "lookahead": 0.5, "grid_aware": True,
        "max_curvature_step": 2.0}},
    "nesterov": {"class_type": "FlowScopeSamplerOptimizer", "inputs": {
        "kind": "nesterov", "beta": 0.5, "gamma": 2.0, "lookahead": 0.5, "grid_aware": True,
        "max_curvature_step": 2.0}},
    "grad_est": {"class_type": "FlowScopeSamplerOptimizer", "inputs": {
        "kind": "gradient_estimation", "beta": 0.5, "gamma": 2.0, "lookahead": 0.5, "grid_aware": True,
        "max_curvature_step": 2.0}},
    "secant": {"class_type": "FlowScopeSamplerOptimizer", "inputs": {
        "kind": "secant", "beta": 0.5, "gamma": 2.0, "lookahead": 0.5, "grid_aware": True,
        "max_curvature_step": 2.0}},
    "abm": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "velocity", "order": 2, "corrector": True}},
    "exp_abm": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "data", "order": 3, "corrector": True}},
    "noise_abm_rules": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "noise", "order": 3, "corrector": True, "corrector_max_log_step": 0.5}},
    "vp_abm_rules": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "vp", "order": 4, "corrector": True, "max_amplification": 4.0,
        "corrector_max_log_step": 1.0}},
    "noise_abm_rk_start": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "noise", "order": 3, "corrector": True, "warm_start": "runge_kutta"}},
    "langevin": {"class_type": "FlowScopeSamplerLangevinPC", "inputs": {
        "predictor": "heun", "corrector_steps": 1, "snr": 0.16}},
    "ddim": {"class_type": "FlowScopeSamplerStochastic", "inputs": {"eta": 0.0, "s_noise": 1.0}},
    "flow_sde": {"class_type": "FlowScopeSamplerStochastic", "inputs": {"eta": 1.0, "s_noise": 1.0}},
}


@pytest.mark.parametrize("model_name,scheduler", MODELS)
def test_every_sampler_node_makes_digits_with_sampler_custom_advanced(comfy, digit_classifier, model_name,
                                                                        scheduler):
    accuracies = {}
    for key, node in SAMPLER_NODES.items():
        prompt = custom_sampler_prompt(model_name, node, digit=str(DIGIT), scheduler=scheduler,
                                       prefix=f"sca_{model_name}_{key}")
        pixels = generated_digits(comfy, prompt)
        assert pixels.shape == (2, 3, 8, 8)
        accuracies[key] = digit_classifier.accuracy(pixels, torch.full((2,), DIGIT))
    assert all(accuracy >= 0.5 for accuracy in accuracies.values()), accuracies
    assert sum(accuracies.values()) / len(accuracies) >= 0.85, accuracies


@pytest.mark.parametrize("model_name", ["digits-flow", "digits-diffusion"])
def test_schedule_nodes_and_dropdown_schedulers_make_digits(comfy, digit_classifier, model_name):
    results = {}
    for schedule in ("uniform", "sd3_shift", "flux_shift", "cosine", "linear_quadratic"):
        sigmas_node = {"class_type": "FlowScopeScheduler", "inputs": {
            "model": ["1", 0], "schedule": schedule, "steps": 12, "denoise": 1.0, "shift": 3.0, "width": 64,
            "height": 64}}
        if model_name == "digits-diffusion" and schedule in ("uniform", "sd3_shift", "flux_shift"):
            continue  # uniform in σ_ve (or a flow-time shift) is not a sensible schedule for an EPS model
        prompt = custom_sampler_prompt(model_name, SAMPLER_NODES["midpoint"], sigmas_node=sigmas_node,
                                       prefix=f"sched_{model_name}_{schedule}")
        results[schedule] = digit_classifier.accuracy(generated_digits(comfy, prompt), torch.full((2,), DIGIT))
    for scheduler in ("fs_cosine", "fs_linear_quadratic") + (("fs_uniform",) if model_name == "digits-flow" else ()):
        prompt = ksampler_prompt(model_name, digit=str(DIGIT), sampler="fs_heun", scheduler=scheduler,
                                 prefix=f"dropdown_{model_name}_{scheduler}")
        results[scheduler] = digit_classifier.accuracy(generated_digits(comfy, prompt), torch.full((2,), DIGIT))
    assert all(accuracy >= 0.5 for accuracy in results.values()), results


@pytest.mark.parametrize("model_name", ["digits-flow", "digits-diffusion"])
def test_trajectory_adaptive_scheduler_runs_the_pilot_through_the_guider(comfy, digit_classifier, model_name):
    sigmas_node = {"class_type": "FlowScopeTrajectoryAdaptiveScheduler", "inputs": {
        "noise": ["13", 0], "guider": ["12", 0], "latent_image": ["4", 0], "steps": 8, "pilot_steps": 12,
        "pilot_scheduler": "simple" if model_name == "digits-flow" else "karras", "sampler_order": 2}}
    prompt = custom_sampler_prompt(model_name, SAMPLER_NODES["midpoint"], sigmas_node=sigmas_node, batch=BATCH,
                                   prefix=f"adaptive_sched_{model_name}")
    prompt["14"] = {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}}
    history = comfy.run(prompt)
    text = history["outputs"]["14"]["text"][0]
    sigmas = [float(v) for v in text.replace("tensor(", "").replace("[", "").replace("])", "").replace(")", "")
              .split(",") if v.strip()]
    assert len(sigmas) == 9 and sigmas[-1] == 0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    pixels = images_to_latent_scale(comfy.output_images(history, "8"))
    assert digit_classifier.accuracy(pixels, torch.full((BATCH,), DIGIT)) >= MIN_ACCURACY


def parse_sigmas(text: str) -> list[float]:
    return [float(v) for v in text.replace("tensor(", "").replace("[", "").replace("])", "").replace(")", "")
            .replace("dtype=torch.float64", "").split(",") if v.strip()]


@pytest.mark.parametrize("model_name,scheduler", MODELS)
def test_optimized_schedule_fits_the_sampler_and_never_loses_on_the_pilot(comfy, digit_classifier, model_name,
                                                                        scheduler):
    """Optimized Schedule on the real server: pilot noise seed 3 (the image uses seed 0), the sampler of the
    final run (fs_abm from the dropdown), 6 steps from the model's usual scheduler, 12 pilot runs."""
    prompt = custom_sampler_prompt(model_name, {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "fs_abm"}},
                                   digit=str(DIGIT), steps=6, scheduler=scheduler, batch=BATCH,
                                   prefix=f"optimized_{model_name}")
    prompt["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    prompt["16"] = {"class_type": "FlowScopeOptimizedSchedule", "inputs": {
        "noise": ["15", 0], "guider": ["12", 0], "sampler": ["10", 0], "sigmas": ["11", 0], "latent_image": ["4", 0],
        "max_evaluations": 12, "knots": 4, "reference_rtol": 1e-4}}
    prompt["5"]["inputs"]["sigmas"] = ["16", 0]
    prompt["17"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 0]}}
    prompt["18"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 1]}}
    prompt["19"] = {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}}
    history = comfy.run(prompt)
    optimized = parse_sigmas(history["outputs"]["17"]["text"][0])
    base = parse_sigmas(history["outputs"]["19"]["text"][0])
    search = history["outputs"]["16"]["flowscope_schedule"][0]
    assert len(optimized) == 7 and optimized[-1] == 0 and all(a > b for a, b in zip(optimized, optimized[1:]))
    assert optimized[0] == pytest.approx(base[0], rel=1e-6)
    assert 0 < search["pilot_error"] <= search["pilot_base_error"], search
    assert 0 < search["evaluations"] <= 12 + 4, search  # a Nelder–Mead shrink finishes its points past the cap
    assert f"{search['pilot_error']:.3e}" in history["outputs"]["18"]["text"][0]
    pixels = images_to_latent_scale(comfy.output_images(history, "8"))
    assert digit_classifier.accuracy(pixels, torch.full((BATCH,), DIGIT)) >= MIN_ACCURACY


def test_optimized_schedule_rejects_a_schedule_without_the_zero_end(comfy):
    prompt = custom_sampler_prompt("digits-flow", SAMPLER_NODES["abm"], prefix="optimized_split")
    prompt["15"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["11", 0], "step": 6}}
    prompt["16"] = {"class_type": "FlowScopeOptimizedSchedule", "inputs": {
        "noise": ["13", 0], "guider": ["12", 0], "sampler": ["10", 0], "sigmas": ["15", 0], "latent_image": ["4", 0],
        "max_evaluations": 5, "knots": 3, "reference_rtol": 1e-4}}
    prompt["5"]["inputs"]["sigmas"] = ["16", 0]
    with pytest.raises(PromptFailed) as failure:
        comfy.run(prompt)
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert "Optimized Schedule" in message and "'sigmas'" in message and "end in 0" in message, message
    assert comfy.alive()


def fitted_solver_prompt(model_name, scheduler, prediction, prefix, steps=6, cfg=2.5):
    """SamplerCustomAdvanced whose SAMPLER is the Fitted Solver node, fitted on pilot noise seed 3 for the same
    SIGMAS the image (seed 0) is sampled with; node 18 previews the report."""
    prompt = custom_sampler_prompt(model_name, SAMPLER_NODES["abm"], digit=str(DIGIT), steps=steps,
                                   scheduler=scheduler, prefix=prefix, cfg=cfg, batch=BATCH)
    del prompt["10"]
    prompt["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    prompt["16"] = {"class_type": "FlowScopeFittedSolver", "inputs": {
        "noise": ["15", 0], "guider": ["12", 0], "sigmas": ["11", 0], "latent_image": ["4", 0],
        "prediction": prediction, "order": 3, "history": 4, "reference_rtol": 1e-4}}
    prompt["5"]["inputs"]["sampler"] = ["16", 0]
    prompt["18"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 1]}}
    return prompt


@pytest.mark.parametrize("model_name,scheduler,prediction,cfg", [("digits-flow", "simple", "velocity", 2.5),
                                                                 ("digits-diffusion", "karras", "data", 2.5),
                                                                 ("digits-flow", "simple", "data", 1.0)])
def test_fitted_solver_fits_on_the_pilot_and_makes_digits(comfy, digit_classifier, model_name, scheduler,
                                                          prediction, cfg):
    """The Fitted Solver node on the real server: fitted on pilot noise seed 3 (8 latents), used for the seed-0
    images on the same 6-step SIGMAS. Its fields: a fitted pilot error below the base update's unless the held-out
    estimate made it keep the base; a held-out estimate from 8 latents. With CFG the probe gives the fit the
    guidance directions; at cfg 1 ComfyUI makes no unconditional call and there is nothing to split."""
    history = comfy.run(fitted_solver_prompt(model_name, scheduler, prediction, prefix=f"fitted_{model_name}_{cfg}",
                                             cfg=cfg))
    fit = history["outputs"]["16"]["flowscope_fit"][0]
    assert fit["steps"] == 6 and fit["reference_nfe"] > 6
    assert fit["guidance_history"] == (2 if cfg != 1 else 0)
    held_out = fit["held_out"]
    assert held_out["latents"] == BATCH and held_out["error"] > 0 and held_out["base_error"] > 0
    if fit["fallback"]:
        assert fit["pilot_error"] == fit["pilot_base_error"]
    else:
        assert 0 < fit["pilot_error"] < fit["pilot_base_error"] and held_out["error"] < held_out["base_error"]
    report = history["outputs"]["18"]["text"][0]
    assert "held-out estimate" in report and f"{fit['pilot_error']:.3e}" in report, report
    pixels = images_to_latent_scale(comfy.output_images(history, "8"))
    assert digit_classifier.accuracy(pixels, torch.full((BATCH,), DIGIT)) >= MIN_ACCURACY


def test_fitted_solver_with_schedule_optimization_samples_its_own_sigmas(comfy, digit_classifier):
    """optimize_schedule on: the node's SIGMAS output (a warped 6-step grid, same ends) drives the sampling; the
    end-to-end refinement then runs on that grid (moving its sigmas after the first too) and reports pilot errors
    that do not rise, and the first model call (a·x, t·σ_max) the search or the refinement chose."""
    prompt = fitted_solver_prompt("digits-flow", "simple", "velocity", prefix="fitted_optimized")
    prompt["16"]["inputs"].update(optimize_schedule=True, max_evaluations=8, refine_iterations=1)
    prompt["5"]["inputs"]["sigmas"] = ["16", 2]
    prompt["17"] = {"class_type": "PreviewAny", "inputs": {"source": ["16", 2]}}
    history = comfy.run(prompt)
    fit = history["outputs"]["16"]["flowscope_fit"][0]
    search, refined = fit["schedule_search"], fit["refinement"]
    assert search["error"] <= search["base_error"] and search["evaluations"] <= 10, search
    assert refined["error"] <= refined["error_before"] and refined["held_out"] <= refined["held_out_before"]
    assert refined["iterations"] in (0, 1) and refined["moved_nodes"] <= 5 * refined["iterations"], refined
    scale, sigma_scale = fit["first_call"]
    assert scale > 0 and 0.5 < sigma_scale <= 1.0, fit
    sigmas = parse_sigmas(history["outputs"]["17"]["text"][0])
    assert len(sigmas) == 7 and sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0
    pixels = images_to_latent_scale(comfy.output_images(history, "8"))
    assert digit_classifier.accuracy(pixels, torch.full((BATCH,), DIGIT)) >= MIN_ACCURACY


def test_fitted_solver_preset_and_model_call_budget(comfy):
    """preset balanced on a pilot of 8 latents: the schedule search is left out (it overfits such pilots) and the
    report says so. The search over 60 grids asked for directly under max_model_calls 600: the node logs its plan,
    counts each stage's model calls, cuts the search to what the reference and the fit leave, and says so."""
    prompt = fitted_solver_prompt("digits-flow", "simple", "velocity", prefix="fitted_preset")
    prompt["16"]["inputs"].update(preset="balanced")
    fit = comfy.run(prompt)["outputs"]["16"]["flowscope_fit"][0]
    assert fit["preset"] == "balanced" and fit["planned_model_calls"]["schedule_search"] == 0, fit
    assert fit["preset_note"].startswith(f"preset balanced: schedule search left out ({BATCH} pilot latents"), fit
    prompt = fitted_solver_prompt("digits-flow", "simple", "velocity", prefix="fitted_budget")
    prompt["16"]["inputs"].update(optimize_schedule=True, max_evaluations=60, max_model_calls=600)
    prompt["5"]["inputs"]["sigmas"] = ["16", 2]
    fit = comfy.run(prompt)["outputs"]["16"]["flowscope_fit"][0]
    assert fit["preset"] == "custom" and fit["max_model_calls"] == 600
    assert fit["planned_model_calls"]["fit"] == 4 * 6 and fit["planned_model_calls"]["schedule_search"] > 600
    spent = sum(fit["model_calls"].values())
    assert fit["model_calls"]["reference"] == fit["reference_nfe"]
    assert spent <= 600 or any("past max_model_calls" in cut for cut in fit["cut_by_budget"]), fit
    assert any(cut.startswith("schedule search") for cut in fit["cut_by_budget"]), fit


def test_fitted_solver_on_other_sigmas_gives_a_clear_error_and_the_server_stays_up(comfy):
    prompt = fitted_solver_prompt("digits-flow", "simple", "data", prefix="fitted_mismatch")
    prompt["19"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 7,
                                                               "denoise": 1.0}}
    prompt["5"]["inputs"]["sigmas"] = ["19", 0]
    with pytest.raises(PromptFailed) as failure:
        comfy.run(prompt)
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert "Fitted Solver" in message and "fitted for the 6-step grid" in message and "7 steps" in message, message
    assert comfy.alive()


def test_increasing_sigmas_give_a_clear_error_and_the_server_stays_up(comfy):
    prompt = custom_sampler_prompt("digits-flow", SAMPLER_NODES["rk4"], prefix="flipped")
    prompt["15"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["11", 0]}}
    prompt["5"]["inputs"]["sigmas"] = ["15", 0]
    with pytest.raises(PromptFailed) as failure:
        comfy.run(prompt)
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert "fs_rk4" in message or "sample_rk" in message, message
    assert "decreasing" in message, message
    assert comfy.alive()
    comfy.run(ksampler_prompt("digits-flow", sampler="fs_rk4", prefix="after_flip"))


def test_max_amplification_below_one_gives_a_clear_error_and_the_server_stays_up(comfy):
    node = {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
        "prediction": "vp", "order": 3, "corrector": True, "max_amplification": 0.5}}
    with pytest.raises(PromptFailed) as failure:
        comfy.run(custom_sampler_prompt("digits-flow", node, prefix="amplification"))
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert "Predictor–Corrector Multistep Sampler" in message and "'max_amplification'" in message, message
    assert comfy.alive()


def test_zero_steps_is_rejected_by_validation(comfy):
    prompt = custom_sampler_prompt("digits-flow", SAMPLER_NODES["rk4"], prefix="zero_steps", sigmas_node={
        "class_type": "FlowScopeScheduler", "inputs": {"model": ["1", 0], "schedule": "uniform", "steps": 0,
                                                       "denoise": 1.0, "shift": 3.0, "width": 64, "height": 64}})
    with pytest.raises(PromptFailed) as failure:
        comfy.queue(prompt)
    assert "steps" in json.dumps(failure.value.history["node_errors"]["11"])


def test_unreachable_tolerance_is_bounded_and_warned(comfy):
    node = {"class_type": "FlowScopeSamplerAdaptive", "inputs": {
        "method": "dopri5", "rtol": 1e-8, "atol": 1e-10, "error_norm": "per_sample", "max_nfe": 40,
        "nfe_budget": 0}}
    started = len(comfy.log())
    pixels = generated_digits(comfy, custom_sampler_prompt("digits-flow", node, prefix="tight_tol"))
    assert pixels.shape == (2, 3, 8, 8) and torch.isfinite(pixels).all()
    new_log = comfy.log()[started:]
    assert "max_nfe" in new_log, new_log[-3000:]


def test_cancel_stops_sampling_within_one_step(comfy):
    import websocket

    client_id = uuid.uuid4().hex
    socket = websocket.create_connection(f"ws://127.0.0.1:{comfy.port}/ws?clientId={client_id}", timeout=60)
    prompt = ksampler_prompt("analytic", sampler="fs_rk4", steps=900, prefix="cancel", seed=11)
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": client_id})
    assert status == 200
    prompt_id = body["prompt_id"]
    steps_seen, interrupted_at, finished = [], None, None
    deadline = time.time() + 120
    while time.time() < deadline:
        raw = socket.recv()
        if not isinstance(raw, str):
            continue
        message = json.loads(raw)
        data = message.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if message["type"] == "progress" and data.get("node") == "5":
            steps_seen.append(data["value"])
            if interrupted_at is None and data["value"] >= 3:
                interrupted_at = data["value"]
                threading.Thread(target=comfy.post, args=("/interrupt", {})).start()
        if message["type"] in ("execution_interrupted", "execution_success", "execution_error"):
            finished = message["type"]
            break
    socket.close()
    assert finished == "execution_interrupted", (finished, steps_seen[-5:])
    assert max(steps_seen) <= interrupted_at + 2, (interrupted_at, max(steps_seen))
    assert comfy.alive()
