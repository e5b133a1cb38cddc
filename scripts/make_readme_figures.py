"""Draw the README's pictures with the pack's own nodes.

    .venv/bin/python scripts/make_readme_figures.py [--screenshot test-artifacts/FlowScopeStraightnessMeter-classic-node41.png]

- ``docs/flow_vs_diffusion.png``: the graph of ``example_workflows/flowscope_flow_vs_diffusion.json`` run in-process
  (ComfyUI booted by ``benchmarks.comfy_inprocess.boot``): digits-flow on ``simple`` and digits-diffusion on
  ``karras``, digit 3, CFG 3, 20 Euler steps, seed 42, batch 4, each through Sample & Record Trajectory, then the
  Velocity Norm Plot of both (its IMAGE output).
- ``docs/in_node_chart.png`` (with ``--screenshot``): the screenshot that the browser test
  ``test_real_workflow_chart_matches_history`` takes of the Straightness Meter in the classic renderer after running
  that workflow in the graph editor (``test-artifacts/``), cropped to the node with its in-node chart and the
  decoded digits.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.comfy_inprocess import boot, pack_module  # noqa: E402

# The part of the 1600×1000 classic-renderer screenshot showing the Straightness Meter with its in-node chart and
# the Preview Image beside it (left, top, right, bottom in pixels).
SCREENSHOT_BOX = (536, 190, 1405, 783)


def save_png(image: Image.Image, path: pathlib.Path, width: int) -> None:
    """Resize to ``width`` pixels and store with a 256-colour palette (charts and the editor have few colours; keeps the files small)."""
    height = round(image.height * width / image.width)
    image = image.convert("RGB").resize((width, height), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {width}×{height}, {path.stat().st_size // 1024} KB")


def flow_vs_diffusion() -> Image.Image:
    boot()
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    demo = pack_module("nodes.demo_nodes")
    diagnostic = pack_module("nodes.diagnostic_nodes")
    (positive,) = demo.DigitConditioning.execute(digit="3").result
    (negative,) = demo.DigitConditioning.execute(digit="empty").result
    trajectories = []
    for name, label, scheduler in (("digits-flow", "digits-flow (rectified flow)", "simple"),
                                   ("digits-diffusion", "digits-diffusion (EPS)", "karras")):
        (model,) = demo.DemoModelLoader.execute(model_name=name).result
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(3.0)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, 20).cpu()
        _, _, trajectory = diagnostic.record_sampling(guider, comfy.samplers.sampler_object("euler"), sigmas,
                                                      {"samples": torch.zeros(4, 3, 8, 8)}, Noise_RandomNoise(42),
                                                      label, preview=False)
        trajectories.append(trajectory)
    (chart,) = diagnostic.VelocityNormPlot.execute(trajectories[0], per_sample=False, log_y=False,
                                                   trajectory_2=trajectories[1]).result
    return Image.fromarray((chart[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", type=pathlib.Path,
                        help="the browser tests' classic-renderer screenshot of the Straightness Meter")
    args = parser.parse_args()
    torch.set_num_threads(1)
    save_png(flow_vs_diffusion(), ROOT / "docs" / "flow_vs_diffusion.png", width=720)
    if args.screenshot:
        save_png(Image.open(args.screenshot).crop(SCREENSHOT_BOX), ROOT / "docs" / "in_node_chart.png", width=760)


if __name__ == "__main__":
    main()
