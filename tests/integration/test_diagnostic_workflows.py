"""The diagnostics example workflows through the real server: flow vs diffusion, and which sampler."""
import json
import pathlib

import pytest
import torch

from scripts.workflows import ui_to_api
from tests.integration.prompts import images_to_latent_scale

pytestmark = pytest.mark.integration
WORKFLOWS = pathlib.Path(__file__).resolve().parents[2] / "example_workflows"


def run_workflow(comfy, object_info, name):
    prompt = ui_to_api(json.loads((WORKFLOWS / name).read_text()), object_info)
    return prompt, comfy.run(prompt, timeout=600)


def test_flow_vs_diffusion_overlays_both_models_in_flow_time(comfy, object_info):
    prompt, history = run_workflow(comfy, object_info, "flowscope_flow_vs_diffusion.json")
    velocity = history["outputs"]["40"]["flowscope_chart"][0]
    assert [s["name"] for s in velocity["series"]] == ["digits-flow (rectified flow) (mean)",
                                                       "digits-diffusion (EPS) (mean)"]
    assert "converted" in velocity["parameterization"] and "overlaid" in velocity["parameterization"]
    flow_t = [x for x in velocity["series"][0]["x"]]
    diffusion_t = [x for x in velocity["series"][1]["x"]]
    assert max(flow_t) == pytest.approx(1.0) and 0.9 < max(diffusion_t) < 1.0  # σ_max/(1+σ_max) ≈ 0.936
    flow, diffusion = history["outputs"]["41"]["flowscope_straightness"]
    assert [flow["label"], diffusion["label"]] == ["digits-flow (rectified flow)", "digits-diffusion (EPS)"]
    # The seed claim on the demo models, same seed and conditioning: the flow model's paths are straighter.
    assert flow["relative_straightness"] < diffusion["relative_straightness"], (flow, diffusion)
    assert len(history["outputs"]["47"]["images"]) == 4


def test_which_sampler_reports_error_against_nfe(comfy, object_info):
    prompt, history = run_workflow(comfy, object_info, "flowscope_which_sampler.json")
    table = history["outputs"]["11"]["text"][0]
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    samplers = prompt["10"]["inputs"]["samplers"].replace(" ", "").split(",")
    assert len(rows) == len(samplers) * 3
    result = {(r[0].strip(), int(r[1])): (int(r[2]), float(r[3])) for r in rows}
    assert [result[("euler", n)][0] for n in (4, 8, 16)] == [4, 8, 16]
    assert [result[("fs_rk4", n)][0] for n in (4, 8, 16)] == [16, 32, 64]
    assert result[("fs_rk4", 16)][1] < result[("euler", 16)][1] / 10
    assert result[("euler", 16)][1] < result[("euler", 4)][1]
    chart = history["outputs"]["10"]["flowscope_chart"][0]
    assert chart["x_log"] and chart["y_log"] and len(chart["series"]) == len(samplers)


def check_pilot_example(comfy, object_info, digit_classifier, name, field, digit):
    """The two pilot-node examples share a layout: the planning node's ``field`` output holds the pilot errors
    before and after (the report previewed by node 12 shows them), lower after; SaveImage 18 and 19 hold 4 images
    of ``digit`` each."""
    prompt, history = run_workflow(comfy, object_info, name)
    (summary,) = [output[field][0] for output in history["outputs"].values() if field in output]
    assert summary["steps"] == 8 and summary["pilot_error"] < summary["pilot_base_error"], summary
    assert f"{summary['pilot_error']:.3e}" in history["outputs"]["12"]["text"][0]
    for node in ("18", "19"):
        images = comfy.output_images(history, node)
        assert len(images) == 4
        pixels = images_to_latent_scale(images)
        assert digit_classifier.accuracy(pixels, torch.full((4,), digit)) >= 0.75, node


def test_optimized_schedule_example_fits_the_pilot_and_samples_both_schedules(comfy, object_info, digit_classifier):
    check_pilot_example(comfy, object_info, digit_classifier, "flowscope_optimized_schedule.json",
                        "flowscope_schedule", digit=5)


def test_fitted_solver_example_fits_on_the_pilot_and_samples_digits(comfy, object_info, digit_classifier):
    check_pilot_example(comfy, object_info, digit_classifier, "flowscope_fitted_solver.json",
                        "flowscope_fit", digit=7)
