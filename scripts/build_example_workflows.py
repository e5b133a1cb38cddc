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


def main():
    with ComfyServer() as server:
        object_info = server.get("/object_info")
    nodes = (sampled_digits_chain(1, 0, "digits-flow", "3", "euler", "simple", "flowscope_demo_flow", 42)
             + sampled_digits_chain(20, 520, "digits-diffusion", "7", "euler", "karras",
                                    "flowscope_demo_diffusion", 42))
    workflow = build_ui_workflow(nodes, object_info)
    out = ROOT / "example_workflows" / "flowscope_digits_demo.json"
    out.write_text(json.dumps(workflow, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
