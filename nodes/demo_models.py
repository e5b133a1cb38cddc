"""Build ComfyUI MODELs from the shipped demo weights (models/*.safetensors).

They go through exactly the code paths of real checkpoints: a ``comfy.model_base.BaseModel`` with a
``ModelType`` (FLOW → CONST prediction + ModelSamplingDiscreteFlow; EPS → ModelSamplingDiscrete with SD1.5's
β schedule), wrapped in a ``comfy.model_patcher.ModelPatcher`` so model management moves it to the GPU.
"""
from __future__ import annotations

import json
import os
import pathlib

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..models.networks import NULL_CLASS, DigitsMLP
from ..models.gaussian_mixture import GaussianMixture

MODELS_DIR = pathlib.Path(os.environ.get("FLOWSCOPE_DEMO_MODELS_DIR") or pathlib.Path(__file__).resolve().parents[1] / "models")
DEMO_MODELS = {
    "digits-flow": "digits-flow.safetensors",
    "digits-diffusion": "digits-diffusion.safetensors",
    "analytic": "analytic.safetensors",
    "analytic-narrow": "analytic-narrow.safetensors",
}


class DemoModelError(ValueError):
    pass


class PixelSpaceRGB(comfy.latent_formats.LatentFormat):
    """3-channel pixel-space latent in [−1, 1]: what ComfyUI's ``pixel_space`` VAE encodes and decodes."""
    latent_channels = 3
    latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    latent_rgb_factors_bias = [0.0, 0.0, 0.0]


class DemoModelConfig(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    latent_format = PixelSpaceRGB
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 0.01


def _sigma_of_call(x, timesteps, transformer_options, sigma_of_timestep):
    """Per-row sigma of a model call, shape [B].

    ComfyUI passes the true sigma in transformer_options["sigmas"] (one per sample of the un-batched call;
    conds are batched by concatenating the same timesteps, hence the repeat). The timestep scale differs
    between model-sampling patches (SD3/Flux/AuraFlow shift nodes), so inverting it is only a fallback.
    """
    sigma = transformer_options.get("sigmas") if transformer_options else None
    if sigma is None:
        sigma = sigma_of_timestep(timesteps)
    sigma = sigma.float().reshape(-1).to(x.device)
    if sigma.numel() != x.shape[0]:
        sigma = sigma.repeat(x.shape[0] // sigma.numel())
    return sigma


def _labels_from_context(context, batch, device):
    if context is None:
        label = torch.zeros(batch, NULL_CLASS + 1, device=device)
        label[:, NULL_CLASS] = 1.0
        return label
    label = context[:, 0, :].float()
    if label.shape[0] != batch:
        label = label.repeat(batch // label.shape[0], 1)
    return label


class DigitsNet(torch.nn.Module):
    """``diffusion_model`` of the digits demos: the trained MLP fed with flow time and the class one-hot."""

    def __init__(self, prediction="flow", width=256, depth=3, time_dim=64, dtype=None, device=None,
                 operations=None, **_):
        super().__init__()
        self.dtype = dtype or torch.float32  # ComfyUI reads diffusion_model.dtype
        self.prediction = prediction
        self.net = DigitsMLP(width, depth, time_dim, ops=operations if operations is not None else torch.nn)
        self.sigma_of_timestep = None  # set by the loader (a bound method, not a submodule)

    def forward(self, x, timesteps, context=None, transformer_options=None, **_):
        sigma = _sigma_of_call(x, timesteps, transformer_options, self.sigma_of_timestep)
        t = sigma if self.prediction == "flow" else sigma / (1 + sigma)
        return self.net(x, t, _labels_from_context(context, x.shape[0], x.device)).to(x.dtype)


class AnalyticNet(torch.nn.Module):
    """``diffusion_model`` returning the exact velocity of a Gaussian mixture (see models/gaussian_mixture.py).

    A digit label restricts the mixture to that digit's component; the empty label uses the whole mixture.
    """

    def __init__(self, components=10, features=192, dtype=None, device=None, operations=None, **_):
        super().__init__()
        self.dtype = torch.float32  # inputs/outputs; the mixture itself is evaluated in float64
        self.register_buffer("means", torch.zeros(components, features, dtype=torch.float64))
        self.register_buffer("stds", torch.ones(components, features, dtype=torch.float64))
        self.register_buffer("log_weights", torch.zeros(components, dtype=torch.float64))
        self.sigma_of_timestep = None

    def forward(self, x, timesteps, context=None, transformer_options=None, **_):
        comfy.model_management.throw_exception_if_processing_interrupted()  # as comfy.ops layers do
        sigma = _sigma_of_call(x, timesteps, transformer_options, self.sigma_of_timestep)
        labels = _labels_from_context(context, x.shape[0], x.device).argmax(dim=1)
        velocity = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        full = GaussianMixture(self.means, self.stds, self.log_weights)
        for label in labels.unique().tolist():  # one mixture evaluation per distinct label in the batch
            rows = labels == label
            mixture = full if label == NULL_CLASS else GaussianMixture(
                self.means[label:label + 1], self.stds[label:label + 1], self.log_weights.new_zeros(1))
            velocity[rows] = mixture.velocity(x[rows].double(), sigma[rows].double())
        return velocity.to(x.dtype)


def _read_weights(name: str):
    from safetensors import safe_open

    if name not in DEMO_MODELS:
        raise DemoModelError(f"unknown demo model {name!r}; valid names: {', '.join(DEMO_MODELS)}")
    path = MODELS_DIR / DEMO_MODELS[name]
    if not path.is_file():
        raise DemoModelError(f"weight file {path} for {name!r} is missing; reinstall the pack or run "
                             f"scripts/train_demo_models.py to recreate it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several exception types for damaged files
        raise DemoModelError(f"weight file {path} for {name!r} is corrupt or unreadable ({error}); reinstall "
                             f"the pack or run scripts/train_demo_models.py") from error
    if metadata.get("format") != "flowscope-demo-1":
        raise DemoModelError(f"weight file {path} is not a FlowScope demo model (metadata {metadata})")
    return metadata, tensors


def load_demo_model(name: str) -> comfy.model_patcher.ModelPatcher:
    metadata, tensors = _read_weights(name)
    kind = metadata["model_type"]
    if kind == "analytic":
        unet_config = {"components": tensors["means"].shape[0], "features": tensors["means"].shape[1]}
        unet_model, model_type, sampling = AnalyticNet, comfy.model_base.ModelType.FLOW, {"shift": 1.0}
        tensors = {key: value.double() for key, value in tensors.items()}
    else:
        unet_config = {"prediction": kind, **json.loads(metadata["architecture"])}
        unet_model = DigitsNet
        tensors = {f"net.{key}": value for key, value in tensors.items()}
        if kind == "flow":
            model_type, sampling = comfy.model_base.ModelType.FLOW, {"shift": 1.0, "multiplier": 1000}
        else:
            model_type = comfy.model_base.ModelType.EPS
            sampling = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
    config = DemoModelConfig(unet_config)
    config.sampling_settings = dict(sampling)
    model = comfy.model_base.BaseModel(config, model_type=model_type, unet_model=unet_model)
    try:
        model.diffusion_model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise DemoModelError(f"weight file for {name!r} does not match its architecture: {error}") from error
    model.diffusion_model.sigma_of_timestep = model.model_sampling.sigma
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())
