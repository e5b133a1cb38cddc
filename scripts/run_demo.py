"""Run the demo workflow headlessly through a real ComfyUI and write its PNGs.

    bash scripts/demo.sh            # provisions ComfyUI if needed, then runs this
    .venv/bin/python scripts/run_demo.py [--workflow example_workflows/flowscope_digits_demo.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.comfy_server import ComfyServer  # noqa: E402
from scripts.workflows import ui_to_api  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=pathlib.Path,
                        default=ROOT / "example_workflows" / "flowscope_digits_demo.json")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "demo_output")
    args = parser.parse_args()
    workflow = json.loads(args.workflow.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with ComfyServer() as server:
        prompt = ui_to_api(workflow, server.get("/object_info"))
        history = server.run(prompt)
        written = []
        for node_id, output in history["outputs"].items():
            for entry in output.get("images", []):
                source = server.output_dir / entry.get("subfolder", "") / entry["filename"]
                target = args.out / entry["filename"]
                shutil.copy(source, target)
                written.append(target)
    print(f"ran {args.workflow.name} through ComfyUI in {time.time() - started:.1f} s; wrote {len(written)} PNGs:")
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
