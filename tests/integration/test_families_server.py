"""One tiny real-architecture family per model-sampling type through the real ComfyUI server's HTTP API: KSampler
with fs_ samplers and fs_ schedulers, and a SamplerCustomAdvanced graph of FlowScope nodes (Scheduler, SAMPLER node,
recorder, Straightness Meter), in float32 and bfloat16. The families come from tests/matrix/families.py, served by
the test-only node in tests/matrix/server_nodes."""
import math
import pathlib

import pytest
import torch

from scripts.comfy_server import ComfyServer
from tests.matrix.families import FAMILIES

pytestmark = [pytest.mark.integration, pytest.mark.matrix]
SERVER_NODES = pathlib.Path(__file__).resolve().parents[1] / "matrix" / "server_nodes"


def one_family_per_sampling_type() -> list[str]:
    chosen = {}
    for key, spec in FAMILIES.items():
        chosen.setdefault(spec.sampling, key)
    return list(chosen.values())


@pytest.fixture(scope="module")
def family_server():
    server = ComfyServer(extra_custom_nodes={"flowscope_test_families": SERVER_NODES})
    server.start()
    yield server
    server.cleanup()


def family_prompt(key: str, dtype: str, prefix: str) -> dict:
    """Node 1 serves the family; 2–4 KSampler runs (euler, fs_rk4 on fs_cosine, fs_exp_abm) saved as latents;
    10–15 a FlowScope graph: Scheduler → PC SAMPLER node → Sample & Record → Straightness Meter, saved."""
    def ksampler(sampler, scheduler):
        return {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3], "seed": 3,
            "steps": 4, "cfg": 2.0, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}}

    def save(node, name):
        return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": f"{prefix}/{name}"}}

    return {
        "1": {"class_type": "FlowScopeTestTinyFamily", "inputs": {"family": key, "dtype": dtype, "batch_size": 2}},
        "2": ksampler("euler", "simple"), "3": ksampler("fs_rk4", "fs_cosine"), "4": ksampler("fs_exp_abm", "simple"),
        "5": save("2", "euler"), "6": save("3", "fs_rk4"), "7": save("4", "fs_exp_abm"),
        "10": {"class_type": "FlowScopeScheduler", "inputs": {
            "model": ["1", 0], "schedule": "uniform", "steps": 5, "denoise": 1.0, "shift": 3.0, "width": 1024,
            "height": 1024}},
        "11": {"class_type": "FlowScopeSamplerPredictorCorrector", "inputs": {
            "prediction": "velocity", "order": 2, "corrector": True}},
        "12": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["1", 1], "negative": ["1", 2],
                                                     "cfg": 2.0}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "14": {"class_type": "FlowScopeRecordSampling", "inputs": {
            "noise": ["13", 0], "guider": ["12", 0], "sampler": ["11", 0], "sigmas": ["10", 0],
            "latent_image": ["1", 3], "label": "", "record_latents": False, "max_latents": 64}},
        "15": {"class_type": "FlowScopeStraightnessMeter", "inputs": {"trajectory": ["14", 2]}},
        "16": save("14", "recorded"),
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("key", one_family_per_sampling_type())
def test_family_through_the_server(family_server, key, dtype):
    history = family_server.run(family_prompt(key, dtype, f"family_{key}_{dtype}"))
    shape = (2, *FAMILIES[key].latent_shape)
    latents = {node: family_server.output_latents(history, node)[0] for node in ("5", "6", "7", "16")}
    for node, latent in latents.items():
        assert tuple(latent.shape) == shape and torch.isfinite(latent).all(), (node, latent.shape)
    (chart,) = history["outputs"]["15"]["flowscope_chart"]
    (series,) = chart["series"]
    assert len(series["y"]) == 5 and all(value is not None and math.isfinite(value) for value in series["y"]), series
