"""The recorder under every sampler in ComfyUI's list (built-in and FlowScope) in the real server."""
import json

import pytest
import torch

from scripts.comfy_server import PromptFailed
from tests.integration.prompts import custom_sampler_prompt, recording_prompt, with_diagnostics, with_saved_latent

pytestmark = pytest.mark.integration


def sampler_names(object_info):
    spec = object_info["KSamplerSelect"]["input"]["required"]["sampler_name"]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def saved_latent(comfy, prompt, prefix):
    return comfy.output_latents(comfy.run(with_saved_latent(prompt, prefix)), "9")[0]


@pytest.mark.parametrize("model_name,scheduler", [("digits-diffusion", "karras"), ("digits-flow", "simple")])
def test_every_sampler_is_bit_identical_with_and_without_recording(comfy, object_info, model_name, scheduler):
    names = sampler_names(object_info)
    assert {"euler", "ddim", "uni_pc", "uni_pc_bh2", "euler_ancestral", "dpmpp_2m_sde", "fs_rk4"} <= set(names)
    differing, failing = [], []
    for name in names:
        select = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": name}}
        plain = custom_sampler_prompt(model_name, select, steps=8, scheduler=scheduler, seed=3,
                                      prefix=f"plain_{name}")
        recorded = recording_prompt(model_name, name, steps=8, scheduler=scheduler, seed=3, prefix=f"rec_{name}")
        try:
            reference = saved_latent(comfy, plain, f"plain_{model_name}_{name}")
        except PromptFailed as failure:  # then recording must fail the same way, not differently
            with pytest.raises(PromptFailed):
                comfy.run(recorded)
            failing.append((name, str(failure)[:200]))
            continue
        if not torch.equal(reference, saved_latent(comfy, recorded, f"rec_{model_name}_{name}")):
            differing.append(name)
    assert differing == []
    assert failing == [], failing


def test_recorded_statistics_reach_the_diagnostic_nodes(comfy):
    history = comfy.run(with_diagnostics(recording_prompt("digits-flow", "fs_heun", steps=10), "diag"))
    velocity = history["outputs"]["20"]["flowscope_chart"][0]
    mean_series = velocity["series"][0]
    assert len(mean_series["x"]) == 20  # Heun: 2 model calls per step, NFE 20 (last step to σ = 0 included)
    assert all(y is not None and y > 0 for y in mean_series["y"])
    (straight,) = history["outputs"]["21"]["flowscope_straightness"]
    files = history["outputs"]["23"]["flowscope_files"]
    exported = json.loads((comfy.output_dir / files[0]).read_text())
    assert exported["nfe"] == 20 and exported["steps"] == 10 and exported["parameterization"] == "flow"
    statistics = exported["statistics"]
    # The meter and the export read the same recording: the same numbers, and S = KE − ‖c‖²/T = Σ contributions.
    assert straight["label"] == exported["label"] and straight["parts"] == []
    for key in ("straightness", "relative_straightness", "path_over_chord", "turning_angle", "kinetic_energy",
                "transport_efficiency", "chord_sq", "span"):
        assert straight[key] == pytest.approx(statistics[key], rel=1e-12), key
    assert statistics["straightness"] == pytest.approx(
        statistics["kinetic_energy"] - statistics["chord_sq"] / statistics["span"], rel=1e-9)
    assert sum(statistics["per_step_contribution"]) == pytest.approx(statistics["straightness"], rel=1e-9)
    csv_lines = (comfy.output_dir / files[1]).read_text().strip().splitlines()
    assert len(csv_lines) == 11 and csv_lines[0].startswith("step,sigma,t")


def test_diagnostics_reject_a_wrong_input_type_with_a_clear_message(comfy):
    """A LATENT wired into a TRAJECTORY input: ComfyUI's validation names the node and input, the graph's
    valid outputs still run and the server stays up."""
    prompt = recording_prompt("digits-flow", "euler", prefix="wrong_type")
    prompt["20"] = {"class_type": "FlowScopeStraightnessMeter", "inputs": {"trajectory": ["4", 0]}}
    status, body = comfy.post("/prompt", {"prompt": prompt})
    errors = json.dumps(body.get("node_errors", {}).get("20", {}))
    assert "trajectory" in errors and "FLOWSCOPE_TRAJECTORY" in errors, (status, body)
    assert comfy.alive() and comfy.get("/object_info/FlowScopeStraightnessMeter")
