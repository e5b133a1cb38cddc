"""The demo through the real ComfyUI: the example workflow, every demo model with KSampler, and bad input."""
import json
import pathlib
import shutil

import pytest
import torch

from scripts.comfy_server import ComfyServer, PromptFailed, error_messages
from scripts.workflows import ui_to_api

from tests.integration.prompts import images_to_latent_scale, ksampler_prompt

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_WORKFLOW = ROOT / "example_workflows" / "flowscope_digits_demo.json"
# Nearest-class-mean accuracy: real held-out digits score 0.88, uniform noise 0.10 (docs/model_card.json).
DIGIT_ACCURACY_THRESHOLD = 0.6

pytestmark = pytest.mark.integration


def test_noise_fails_the_digit_check(digit_classifier):
    noise = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert digit_classifier.accuracy(noise, torch.full((200,), 3)) < DIGIT_ACCURACY_THRESHOLD / 2


def test_example_workflow_renders_the_requested_digits(comfy, object_info, digit_classifier):
    workflow = json.loads(DEMO_WORKFLOW.read_text())
    prompt = ui_to_api(workflow, object_info)
    history = comfy.run(prompt)
    save_nodes = {node_id: node for node_id, node in prompt.items() if node["class_type"] == "SaveImage"}
    assert len(save_nodes) == 2
    for node_id in save_nodes:
        sampler_id = next(i for i, n in prompt.items() if n["class_type"] == "KSampler"
                          and int(i) < int(node_id) and int(node_id) - int(i) < 10)
        positive_id = prompt[sampler_id]["inputs"]["positive"][0]
        digit = int(prompt[positive_id]["inputs"]["digit"])
        batch = prompt[prompt[sampler_id]["inputs"]["latent_image"][0]]["inputs"]["batch_size"]
        images = comfy.output_images(history, node_id)
        assert len(images) == batch
        assert all(image.size == (256, 256) for image in images)
        accuracy = digit_classifier.accuracy(images_to_latent_scale(images), torch.full((batch,), digit))
        assert accuracy >= DIGIT_ACCURACY_THRESHOLD, (node_id, digit, accuracy)


@pytest.mark.parametrize("model_name,scheduler", [("digits-flow", "simple"), ("digits-diffusion", "karras"),
                                                  ("analytic", "simple")])
def test_each_demo_model_draws_the_requested_digit_with_ksampler_and_cfg(comfy, digit_classifier, model_name,
                                                                        scheduler):
    """A batch of 16 of one digit through KSampler with CFG reaches the classifier's accuracy threshold (real
    held-out digits score 0.88, noise 0.10): at least 10 of the 16 are recognized as that digit."""
    batch = 16
    prompt = ksampler_prompt(model_name, digit="5", batch=batch, cfg=2.5, steps=16, scheduler=scheduler,
                             prefix=f"ks_{model_name}")
    images = comfy.output_images(comfy.run(prompt), "8")
    assert [image.size for image in images] == [(8, 8)] * batch
    pixels = images_to_latent_scale(images)
    assert float(pixels.std()) > 0.2  # not a blank image
    accuracy = digit_classifier.accuracy(pixels, torch.full((batch,), 5))
    assert accuracy >= DIGIT_ACCURACY_THRESHOLD, (model_name, accuracy)


def rejection_text(server, prompt) -> str:
    """The error a user sees: 400 node_errors (ComfyUI validating COMBO values, newer versions) or the node's
    own execution error (ComfyUI 0.3.75 does not validate V3 COMBO values before running)."""
    try:
        history = server.run(prompt)
    except PromptFailed as failure:
        return json.dumps(failure.history, ensure_ascii=False)
    raise AssertionError(f"prompt was accepted and ran: {history['status']}")


@pytest.mark.parametrize("node_id,node_name,field,value", [
    ("1", "FlowScope · Demo Model Loader", "model_name", "sd15-does-not-exist"),
    ("2", "FlowScope · Digit Conditioning", "digit", "12"),
])
def test_unknown_model_name_or_digit_gives_a_clear_error(comfy, node_id, node_name, field, value):
    prompt = ksampler_prompt("digits-flow", prefix="bad_input")
    prompt[node_id]["inputs"][field] = value
    text = rejection_text(comfy, prompt)
    assert field in text and value in text
    assert node_name in text or "value_not_in_list" in text
    assert comfy.alive() and comfy.get("/object_info/KSampler")


def test_missing_or_corrupt_weights_give_a_clear_error_and_the_server_stays_up(tmp_path):
    (tmp_path / "digits-flow.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    shutil.copy(ROOT / "models" / "analytic.safetensors", tmp_path / "analytic.safetensors")
    with ComfyServer(extra_env={"FLOWSCOPE_DEMO_MODELS_DIR": str(tmp_path)}) as server:
        expected = {"digits-flow": "corrupt", "digits-diffusion": "missing"}
        for model_name, word in expected.items():
            with pytest.raises(PromptFailed) as failure:
                server.run(ksampler_prompt(model_name, prefix=model_name))
            message = error_messages(failure.value.history)[0]
            assert message["node_type"] == "FlowScopeDemoModelLoader"
            assert "FlowScope · Demo Model Loader" in message["exception_message"]
            assert "'model_name'" in message["exception_message"] and word in message["exception_message"]
        assert server.alive()
        images = server.output_images(server.run(ksampler_prompt("analytic", prefix="after_errors")), "8")
        assert len(images) == 2
