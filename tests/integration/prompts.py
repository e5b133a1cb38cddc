"""API-format prompt builders shared by the integration tests."""
from __future__ import annotations


def ksampler_prompt(model_name: str, digit: str = "3", batch: int = 2, cfg: float = 2.5, steps: int = 12,
                    sampler: str = "euler", scheduler: str = "simple", seed: int = 0,
                    prefix: str = "flowscope_test") -> dict:
    """DemoModelLoader → KSampler (positive digit, negative empty) → pixel_space VAEDecode → SaveImage."""
    return {
        "1": {"class_type": "FlowScopeDemoModelLoader", "inputs": {"model_name": model_name}},
        "2": {"class_type": "FlowScopeDigitConditioning", "inputs": {"digit": digit}},
        "3": {"class_type": "FlowScopeDigitConditioning", "inputs": {"digit": "empty"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def images_to_latent_scale(images):
    """PIL RGB images (any integer upscale of 8×8, nearest) → tensor [N, 3, 8, 8] in [−1, 1]."""
    import numpy as np
    import torch

    arrays = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float64) / 255.0  # H, W, 3
        block = pixels.shape[0] // 8
        pixels = pixels.reshape(8, block, 8, block, 3).mean(axis=(1, 3))
        arrays.append(pixels.transpose(2, 0, 1) * 2 - 1)
    return torch.tensor(np.stack(arrays), dtype=torch.float32)


def custom_sampler_prompt(model_name: str, sampler_node: dict, digit: str = "5", batch: int = 2, cfg: float = 2.5,
                          steps: int = 12, scheduler: str = "simple", seed: int = 0, prefix: str = "custom",
                          sigmas_node: dict | None = None) -> dict:
    """SamplerCustomAdvanced with a FlowScope SAMPLER node (``sampler_node`` is that node's API dict)."""
    prompt = ksampler_prompt(model_name, digit=digit, batch=batch, cfg=cfg, steps=steps, scheduler=scheduler,
                             seed=seed, prefix=prefix)
    del prompt["5"]
    prompt.update({
        "10": sampler_node,
        "11": sigmas_node or {"class_type": "BasicScheduler", "inputs": {
            "model": ["1", 0], "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
        "12": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                     "negative": ["3", 0], "cfg": cfg}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "5": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["13", 0], "guider": ["12", 0], "sampler": ["10", 0], "sigmas": ["11", 0],
            "latent_image": ["4", 0]}},
    })
    return prompt


def with_saved_latent(prompt: dict, prefix: str) -> dict:
    prompt = dict(prompt)
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}}
    return prompt


def recording_prompt(model_name: str, sampler_name: str = "euler", steps: int = 12, scheduler: str = "simple",
                     batch: int = 2, cfg: float = 2.5, seed: int = 0, digit: str = "5", prefix: str = "rec",
                     sampler_node: dict | None = None) -> dict:
    """Demo model → FlowScopeRecordSampling (node "5") with KSamplerSelect, plus diagnostics 20–24."""
    prompt = custom_sampler_prompt(model_name, sampler_node or {"class_type": "KSamplerSelect",
                                                                "inputs": {"sampler_name": sampler_name}},
                                   digit=digit, batch=batch, cfg=cfg, steps=steps, scheduler=scheduler, seed=seed,
                                   prefix=prefix)
    prompt["5"] = {"class_type": "FlowScopeRecordSampling", "inputs": {
        **prompt["5"]["inputs"], "label": "", "record_latents": False, "max_latents": 64}}
    return prompt


def with_diagnostics(prompt: dict, prefix: str) -> dict:
    prompt = dict(prompt)
    prompt["20"] = {"class_type": "FlowScopeVelocityNormPlot", "inputs": {
        "trajectory": ["5", 2], "per_sample": True, "log_y": False}}
    prompt["21"] = {"class_type": "FlowScopeStraightnessMeter", "inputs": {"trajectory": ["5", 2]}}
    prompt["22"] = {"class_type": "FlowScopeStepErrorMeter", "inputs": {"trajectory": ["5", 2]}}
    prompt["23"] = {"class_type": "FlowScopeExportTrajectory", "inputs": {
        "trajectory": ["5", 2], "filename_prefix": f"flowscope/{prefix}"}}
    prompt["24"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": f"{prefix}_chart"}}
    return prompt
