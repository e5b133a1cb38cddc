"""Save Fitted Solver / Load Fitted Solver on the real server: a saved fit reloads and samples the same image,
other SIGMAS are an error, another MODEL a warning, and a corrupt file a clear error with the server still up."""
import pytest

from scripts.comfy_server import PromptFailed, error_messages
from tests.integration.prompts import custom_sampler_prompt, with_saved_latent

pytestmark = pytest.mark.integration
STEPS = 6


def sampling_prompt(sampler_node: dict, prefix: str, model_name="digits-flow") -> dict:
    prompt = custom_sampler_prompt(model_name, sampler_node, digit="5", steps=STEPS, scheduler="simple",
                                   prefix=prefix)
    return with_saved_latent(prompt, prefix)


def fit_and_save_prompt(prefix: str) -> dict:
    prompt = sampling_prompt({"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}, prefix)
    prompt["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    prompt["10"] = {"class_type": "FlowScopeFittedSolver", "inputs": {
        "noise": ["15", 0], "guider": ["12", 0], "sigmas": ["11", 0], "latent_image": ["4", 0],
        "prediction": "data", "order": 3, "history": 4, "reference_rtol": 1e-4}}
    prompt["16"] = {"class_type": "FlowScopeSaveFittedSolver", "inputs": {
        "sampler": ["10", 0], "filename_prefix": f"it/{prefix}", "folder": "flowscope_solvers"}}
    return prompt


def load_prompt(solver_file: str, prefix: str, model_name="digits-flow") -> dict:
    prompt = sampling_prompt({"class_type": "FlowScopeLoadFittedSolver", "inputs": {
        "solver_file": solver_file, "model": ["1", 0]}}, prefix, model_name)
    prompt["5"]["inputs"]["sigmas"] = ["10", 1]
    return prompt


@pytest.fixture(scope="module")
def saved(comfy):
    history = comfy.run(fit_and_save_prompt("saved_fit"))
    listed = history["outputs"]["16"]["text"][0]
    return listed, comfy.output_latents(history, "9")[0]


def test_a_saved_fit_reloads_and_samples_the_same_latent(comfy, saved):
    listed, fitted_latent = saved
    assert (comfy.base_dir / "models" / "flowscope_solvers" / listed).is_file()
    history = comfy.run(load_prompt(listed, "reloaded"))
    summary = history["outputs"]["10"]["flowscope_solver"][0]
    assert summary["steps"] == STEPS and summary["model_checked"] and not summary["other_model"]
    assert len(summary["provenance"]["model_fingerprint"]) == 16 and summary["provenance"]["model_sampling"]
    assert summary["provenance"]["cfg"] == "2.5" and summary["provenance"]["latent_shape"] == "4×8×8"  # EmptyLatentImage's
    reloaded = comfy.output_latents(history, "9")[0]
    assert reloaded.shape == fitted_latent.shape and (reloaded == fitted_latent).all()


def test_another_model_is_a_warning(comfy, saved):
    history = comfy.run(load_prompt(saved[0], "other_model", model_name="digits-diffusion"))
    summary = history["outputs"]["10"]["flowscope_solver"][0]
    assert summary["other_model"] and summary["model_checked"]
    assert history["outputs"]["10"]["text"][0].startswith("WARNING: the solver was fitted for another model")


def test_other_sigmas_are_a_clear_error(comfy, saved):
    prompt = load_prompt(saved[0], "other_steps")
    prompt["5"]["inputs"]["sigmas"] = ["11", 0]
    prompt["11"]["inputs"]["steps"] = STEPS + 1
    with pytest.raises(PromptFailed) as failure:
        comfy.run(prompt)
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert f"fitted for the {STEPS}-step grid" in message and f"{STEPS + 1} steps" in message, message
    assert comfy.alive()


def test_a_corrupt_file_is_a_clear_error_and_the_server_stays_up(comfy, saved):
    folder = comfy.base_dir / "models" / "flowscope_solvers" / "it"
    data = (comfy.base_dir / "models" / "flowscope_solvers" / saved[0]).read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PromptFailed) as failure:
        comfy.run(load_prompt("it/truncated.safetensors", "truncated"))
    message = error_messages(failure.value.history)[0]["exception_message"]
    assert "Load Fitted Solver, input 'solver_file'" in message and "not a readable safetensors file" in message
    assert comfy.alive()
