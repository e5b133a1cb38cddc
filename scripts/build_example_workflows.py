"""Regenerate example_workflows/*.json (UI format) against a running provisioned ComfyUI.

    .venv/bin/python scripts/build_example_workflows.py
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.comfy_server import ComfyServer  # noqa: E402
from scripts.workflows import build_ui_workflow  # noqa: E402


def sampled_digits_chain(first_id: int, y: int, model_name: str, digit: str, sampler: str, scheduler: str,
                         prefix: str, seed: int) -> list[dict]:
    i = first_id
    return [
        {"id": i, "type": "FlowScopeDemoModelLoader", "pos": [40, y], "widgets": {"model_name": model_name}},
        {"id": i + 1, "type": "FlowScopeDigitConditioning", "pos": [40, y + 120], "widgets": {"digit": digit},
         "title": "positive"},
        {"id": i + 2, "type": "FlowScopeDigitConditioning", "pos": [40, y + 220], "widgets": {"digit": "empty"},
         "title": "negative (unconditional)"},
        {"id": i + 3, "type": "EmptyLatentImage", "pos": [40, y + 320],
         "widgets": {"width": 64, "height": 64, "batch_size": 8}},
        {"id": i + 4, "type": "KSampler", "pos": [380, y], "size": [300, 270],
         "widgets": {"seed": seed, "steps": 20, "cfg": 3.0, "sampler_name": sampler, "scheduler": scheduler,
                     "denoise": 1.0},
         "links": {"model": (i, 0), "positive": (i + 1, 0), "negative": (i + 2, 0), "latent_image": (i + 3, 0)}},
        {"id": i + 5, "type": "VAELoader", "pos": [380, y + 300], "widgets": {"vae_name": "pixel_space"}},
        {"id": i + 6, "type": "VAEDecode", "pos": [720, y], "links": {"samples": (i + 4, 0), "vae": (i + 5, 0)}},
        {"id": i + 7, "type": "ImageScale", "pos": [720, y + 100],
         "widgets": {"upscale_method": "nearest-exact", "width": 256, "height": 256, "crop": "disabled"},
         "links": {"image": (i + 6, 0)}},
        {"id": i + 8, "type": "SaveImage", "pos": [1040, y], "size": [400, 400],
         "widgets": {"filename_prefix": prefix}, "links": {"images": (i + 7, 0)}},
    ]


def recorded_chain(first_id: int, y: int, model_name: str, digit: str, sampler: str, scheduler: str,
                   label: str, seed: int = 42, steps: int = 20) -> list[dict]:
    """Demo model → CFGGuider → FlowScopeRecordSampling (node first_id + 8, outputs: latent, denoised, trajectory)."""
    i = first_id
    return [
        {"id": i, "type": "FlowScopeDemoModelLoader", "pos": [40, y], "widgets": {"model_name": model_name}},
        {"id": i + 1, "type": "FlowScopeDigitConditioning", "pos": [40, y + 110], "widgets": {"digit": digit}},
        {"id": i + 2, "type": "FlowScopeDigitConditioning", "pos": [40, y + 200], "widgets": {"digit": "empty"}},
        {"id": i + 3, "type": "CFGGuider", "pos": [340, y], "widgets": {"cfg": 3.0},
         "links": {"model": (i, 0), "positive": (i + 1, 0), "negative": (i + 2, 0)}},
        {"id": i + 4, "type": "KSamplerSelect", "pos": [340, y + 130], "widgets": {"sampler_name": sampler}},
        {"id": i + 5, "type": "BasicScheduler", "pos": [340, y + 210],
         "widgets": {"scheduler": scheduler, "steps": steps, "denoise": 1.0}, "links": {"model": (i, 0)}},
        {"id": i + 6, "type": "RandomNoise", "pos": [40, y + 290], "widgets": {"noise_seed": seed}},
        {"id": i + 7, "type": "EmptyLatentImage", "pos": [40, y + 390],
         "widgets": {"width": 64, "height": 64, "batch_size": 4}},
        {"id": i + 8, "type": "FlowScopeRecordSampling", "pos": [660, y], "size": [320, 220],
         "widgets": {"label": label},
         "links": {"noise": (i + 6, 0), "guider": (i + 3, 0), "sampler": (i + 4, 0), "sigmas": (i + 5, 0),
                   "latent_image": (i + 7, 0)}},
    ]


def flow_vs_diffusion(object_info) -> dict:
    nodes = (recorded_chain(1, 0, "digits-flow", "3", "euler", "simple", "digits-flow (rectified flow)")
             + recorded_chain(20, 560, "digits-diffusion", "3", "euler", "karras", "digits-diffusion (EPS)"))
    nodes += [
        {"id": 40, "type": "FlowScopeVelocityNormPlot", "pos": [1040, 0], "size": [520, 520],
         "widgets": {"per_sample": False, "log_y": False}, "links": {"trajectory": (9, 2), "trajectory_2": (28, 2)}},
        {"id": 41, "type": "FlowScopeStraightnessMeter", "pos": [1040, 560], "size": [520, 560],
         "links": {"trajectory": (9, 2), "trajectory_2": (28, 2)}},
        {"id": 42, "type": "VAELoader", "pos": [660, 260], "widgets": {"vae_name": "pixel_space"}},
        {"id": 43, "type": "VAEDecode", "pos": [660, 360], "links": {"samples": (9, 0), "vae": (42, 0)}},
        {"id": 44, "type": "VAEDecode", "pos": [660, 820], "links": {"samples": (28, 0), "vae": (42, 0)}},
        {"id": 45, "type": "ImageScale", "pos": [660, 460],
         "widgets": {"upscale_method": "nearest-exact", "width": 128, "height": 128, "crop": "disabled"},
         "links": {"image": (43, 0)}},
        {"id": 46, "type": "ImageScale", "pos": [660, 920],
         "widgets": {"upscale_method": "nearest-exact", "width": 128, "height": 128, "crop": "disabled"},
         "links": {"image": (44, 0)}},
        {"id": 47, "type": "PreviewImage", "pos": [1600, 0], "links": {"images": (45, 0)}},
        {"id": 48, "type": "PreviewImage", "pos": [1600, 560], "links": {"images": (46, 0)}},
    ]
    return build_ui_workflow(nodes, object_info)


def which_sampler(object_info) -> dict:
    # model 1, conditionings 2–3, guider 4, noise 7, latent 8 of the recording chain (no sampler/schedule/recorder)
    nodes = [node for node in recorded_chain(1, 0, "digits-flow", "5", "euler", "simple", "")
             if node["id"] not in (5, 6, 9)]
    nodes += [
        {"id": 10, "type": "FlowScopeCompareSamplers", "pos": [660, 0], "size": [560, 640],
         "widgets": {"samplers": "euler, heun, dpmpp_2m, uni_pc, fs_heun, fs_rk4, fs_ab3, fs_abm",
                     "steps": "4, 8, 16", "scheduler": "simple", "reference_rtol": 1e-5},
         "links": {"noise": (7, 0), "guider": (4, 0), "latent_image": (8, 0)}},
        {"id": 11, "type": "PreviewAny", "pos": [1260, 0], "size": [520, 400], "links": {"source": (10, 1)}},
    ]
    return build_ui_workflow(nodes, object_info)


def optimized_schedule(object_info) -> dict:
    """Fit beta/8 steps to fs_abm on pilot noise (seed 1), then sample seed 42 with plain and optimized sigmas."""
    chain = recorded_chain(1, 0, "digits-flow", "5", "fs_abm", "beta", "", seed=42, steps=8)
    nodes = [node for node in chain if node["id"] != 9]  # model 1, conds 2–3, guider 4, sampler 5, sigmas 6,
    nodes += [                                          # noise 7 (final run), latent 8
        {"id": 10, "type": "RandomNoise", "pos": [40, 520], "widgets": {"noise_seed": 1}, "title": "pilot noise"},
        {"id": 11, "type": "FlowScopeOptimizedSchedule", "pos": [660, 0], "size": [340, 260],
         "widgets": {"max_evaluations": 60, "knots": 6, "reference_rtol": 1e-5},
         "links": {"noise": (10, 0), "guider": (4, 0), "sampler": (5, 0), "sigmas": (6, 0),
                   "latent_image": (8, 0)}},
        {"id": 12, "type": "PreviewAny", "pos": [1040, 0], "size": [420, 160], "links": {"source": (11, 1)},
         "title": "pilot error before → after"},
        {"id": 13, "type": "SamplerCustomAdvanced", "pos": [1040, 200],
         "links": {"noise": (7, 0), "guider": (4, 0), "sampler": (5, 0), "sigmas": (11, 0),
                   "latent_image": (8, 0)}, "title": "optimized schedule"},
        {"id": 14, "type": "SamplerCustomAdvanced", "pos": [1040, 460],
         "links": {"noise": (7, 0), "guider": (4, 0), "sampler": (5, 0), "sigmas": (6, 0),
                   "latent_image": (8, 0)}, "title": "input schedule"},
        {"id": 15, "type": "VAELoader", "pos": [1040, 720], "widgets": {"vae_name": "pixel_space"}},
        {"id": 16, "type": "VAEDecode", "pos": [1380, 200], "links": {"samples": (13, 0), "vae": (15, 0)}},
        {"id": 17, "type": "VAEDecode", "pos": [1380, 460], "links": {"samples": (14, 0), "vae": (15, 0)}},
        {"id": 18, "type": "SaveImage", "pos": [1640, 200], "widgets": {"filename_prefix": "flowscope_optimized"},
         "links": {"images": (16, 0)}},
        {"id": 19, "type": "SaveImage", "pos": [1640, 460], "widgets": {"filename_prefix": "flowscope_input_schedule"},
         "links": {"images": (17, 0)}},
    ]
    return build_ui_workflow(nodes, object_info)


def fitted_solver(object_info) -> dict:
    """Fit an 8-step solver to digits-diffusion / karras on pilot noise (seed 1), then sample seed 42 with it and
    with fs_exp_abm on the same sigmas."""
    chain = recorded_chain(1, 0, "digits-diffusion", "7", "fs_exp_abm", "karras", "", seed=42, steps=8)
    nodes = [node for node in chain if node["id"] != 9]  # model 1, conds 2–3, guider 4, sampler 5, sigmas 6,
    nodes += [                                          # noise 7 (final run), latent 8
        {"id": 10, "type": "RandomNoise", "pos": [40, 520], "widgets": {"noise_seed": 1}, "title": "pilot noise"},
        {"id": 11, "type": "FlowScopeFittedSolver", "pos": [660, 0], "size": [340, 260],
         "widgets": {"prediction": "data", "order": 3, "history": 8, "reference_rtol": 1e-5,
                     "optimize_schedule": False, "max_evaluations": 60},
         "links": {"noise": (10, 0), "guider": (4, 0), "sigmas": (6, 0), "latent_image": (8, 0)}},
        {"id": 12, "type": "PreviewAny", "pos": [1040, 0], "size": [420, 160], "links": {"source": (11, 1)},
         "title": "pilot error: base → fitted"},
        {"id": 13, "type": "SamplerCustomAdvanced", "pos": [1040, 200],
         "links": {"noise": (7, 0), "guider": (4, 0), "sampler": (11, 0), "sigmas": (6, 0),
                   "latent_image": (8, 0)}, "title": "fitted solver"},
        {"id": 14, "type": "SamplerCustomAdvanced", "pos": [1040, 460],
         "links": {"noise": (7, 0), "guider": (4, 0), "sampler": (5, 0), "sigmas": (6, 0),
                   "latent_image": (8, 0)}, "title": "fs_exp_abm"},
        {"id": 15, "type": "VAELoader", "pos": [1040, 720], "widgets": {"vae_name": "pixel_space"}},
        {"id": 16, "type": "VAEDecode", "pos": [1380, 200], "links": {"samples": (13, 0), "vae": (15, 0)}},
        {"id": 17, "type": "VAEDecode", "pos": [1380, 460], "links": {"samples": (14, 0), "vae": (15, 0)}},
        {"id": 18, "type": "SaveImage", "pos": [1640, 200], "widgets": {"filename_prefix": "flowscope_fitted"},
         "links": {"images": (16, 0)}},
        {"id": 19, "type": "SaveImage", "pos": [1640, 460], "widgets": {"filename_prefix": "flowscope_exp_abm"},
         "links": {"images": (17, 0)}},
    ]
    return build_ui_workflow(nodes, object_info)


def main():
    with ComfyServer() as server:
        object_info = server.get("/object_info")
    nodes = (sampled_digits_chain(1, 0, "digits-flow", "3", "euler", "simple", "flowscope_demo_flow", 42)
             + sampled_digits_chain(20, 520, "digits-diffusion", "7", "euler", "karras",
                                    "flowscope_demo_diffusion", 42))
    workflows = {"flowscope_digits_demo.json": build_ui_workflow(nodes, object_info),
                 "flowscope_flow_vs_diffusion.json": flow_vs_diffusion(object_info),
                 "flowscope_which_sampler.json": which_sampler(object_info),
                 "flowscope_optimized_schedule.json": optimized_schedule(object_info),
                 "flowscope_fitted_solver.json": fitted_solver(object_info)}
    for name, workflow in workflows.items():
        out = ROOT / "example_workflows" / name
        out.write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
