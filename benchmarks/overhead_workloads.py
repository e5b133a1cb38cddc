"""The overhead benchmark's configuration and workloads: which samplers and models it times, the demo-model and
large-latent MODELs with fixed noise and conditioning, and one timed sampling run (see ``benchmarks/overhead.py``).
"""
from __future__ import annotations

import time

from benchmarks.comfy_inprocess import CountingGuider, pack_module

TARGET_RATIO = 1.03
TARGET_RECORDING = 0.05
RECORDING_REPEATS = 6  # × --repeats on the demo model: its recording rows are cheap and a few % is the signal
CFG = 3.0
DEMO_MODELS = ("digits-flow", "digits-diffusion", "analytic")
LARGE = "analytic-16x128x128"
QUICK_SAMPLERS = ("fs_euler", "fs_heun", "fs_rk4", "fs_ab3", "fs_dopri5")
ADAPTIVE = ("fs_bosh3", "fs_dopri5")
# Built-in samplers timed beside the pack's as a reference (no target): ComfyUI's own stochastic Euler draws a
# noise latent per step, as the pack's SDE samplers do, so it shows what that draw costs any sampler.
BUILTIN_REFERENCES = ("euler_ancestral",)
STOCHASTIC = ("fs_langevin_pc", "fs_flow_sde", "fs_ddim")


def make_large_analytic_model(channels: int = 16, size: int = 128, components: int = 4, seed: int = 0):
    """A ``channels×size×size`` analytic flow MODEL built like nodes/demo_models.py builds ``analytic``:
    an exact Gaussian-mixture velocity (``AnalyticNet``) in a ``BaseModel(model_type=FLOW)`` wrapped in a
    ``ModelPatcher``, with random means/stds of ``components`` components."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import torch

    demo = pack_module("nodes.demo_models")

    class Latent(comfy.latent_formats.LatentFormat):
        latent_channels = channels

    class Config(demo.DemoModelConfig):
        latent_format = Latent

    features = channels * size * size
    generator = torch.Generator().manual_seed(seed)
    tensors = {"means": torch.randn(components, features, generator=generator, dtype=torch.float64) * 0.8,
               "stds": 0.2 + 0.3 * torch.rand(components, features, generator=generator, dtype=torch.float64),
               "log_weights": torch.full((components,), -float(torch.log(torch.tensor(float(components)))),
                                         dtype=torch.float64)}
    config = Config({"components": components, "features": features})
    config.sampling_settings = {"shift": 1.0}
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.FLOW,
                                       unet_model=demo.AnalyticNet)
    model.diffusion_model.load_state_dict(tensors, strict=True)
    model.diffusion_model.sigma_of_timestep = model.model_sampling.sigma
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class Workload:
    """A MODEL with its latent, noise, conditioning and a sigma grid factory."""

    def __init__(self, name: str, batch: int):
        import torch

        networks = pack_module("models.networks")
        if name == LARGE:
            self.model = make_large_analytic_model()
            shape = (batch, 16, 128, 128)
            digit = None
        else:
            self.model = pack_module("nodes.demo_models").load_demo_model(name)
            shape = (batch,) + tuple(networks.IMAGE_SHAPE)
            digit = 3
        self.name = name
        self.shape = shape
        self.latent = torch.zeros(shape)
        self.noise = torch.randn(shape, generator=torch.Generator().manual_seed(1234))
        self.positive = [[networks.condition_vector(digit), {}]]
        self.negative = [[networks.condition_vector(None), {}]]
        self.counting = CountingGuider(self.model, self.positive, self.negative, CFG)

    def sigmas(self, steps: int):
        import comfy.samplers

        return comfy.samplers.calculate_sigmas(self.model.get_model_object("model_sampling"), "simple", steps)

    def plain_guider(self):
        import comfy.samplers

        guider = comfy.samplers.CFGGuider(self.model)
        guider.set_conds(self.positive, self.negative)
        guider.set_cfg(CFG)
        return guider


class FixedNoise:
    """The NOISE object ``record_sampling`` expects, returning a fixed tensor."""

    def __init__(self, noise, seed: int = 0):
        self.noise, self.seed = noise, seed

    def generate_noise(self, latent_dict):
        return self.noise


def sampler(name: str):
    import comfy.samplers

    return comfy.samplers.sampler_object(name)


def timed_counting(work: Workload, name: str, sigmas) -> tuple[float, int, float]:
    """(wall seconds, NFE, process CPU seconds) of one sampling run."""
    import torch

    smp = sampler(name)
    with torch.inference_mode():
        cpu, start = time.process_time(), time.perf_counter()
        _, nfe = work.counting.sample(smp, sigmas, work.noise, work.latent, seed=0)
        return time.perf_counter() - start, nfe, time.process_time() - cpu


def large_steps(args) -> int:
    """Step count on the large latent (a quarter of the demo count: 60-200 ms per model call on 2 shared CPU
    cores; the budget goes into best-of-k repeats instead, which the noise there needs more than steps)."""
    return max(2, args.steps // 4)

