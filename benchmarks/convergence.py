"""Convergence study: endpoint error against step count far past the benchmark budgets, per problem.

    .venv/bin/python benchmarks/convergence.py        # writes docs/benchmark_convergence.md (a few minutes)

Shows where fixed-step solvers stop converging at their nominal order on the demo models (the learned networks
are not smooth in σ at small scales) and that on the smooth analytic model they keep it. Same ComfyUI path,
noise, conditioning and reference as benchmarks/quality.py (seed 0, batch 16, fs_dopri5 at rtol 1e-7).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import platform
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.comfy_inprocess import boot  # noqa: E402
from benchmarks.harness import commit, utc_now  # noqa: E402

STEPS = (16, 32, 64, 128, 256)
CASES = [("analytic", "analytic", "beta"), ("digits-flow", "digits-flow", "beta"),
         ("digits-diffusion", "digits-diffusion", "karras")]
SAMPLERS = ("ipndm", "uni_pc_bh2", "fs_abm", "fs_exp_abm")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "benchmark_convergence.md")
    args = parser.parse_args()
    boot()
    import comfy.samplers

    from ComfyUI_FlowScope.diagnostics.error_vs_nfe import error_vs_nfe

    from benchmarks.quality_problems import Problem, reference_solution

    torch.set_num_threads(2)
    lines = ["# Convergence study: endpoint error vs steps", "",
             f"Command: `python benchmarks/convergence.py`  ",
             f"Date: {utc_now()}; commit {commit()}; machine: "
             f"{platform.processor() or platform.machine()}; torch {torch.__version__}.", "",
             "RMS endpoint error against the problem's reference (the quality benchmark's problems, its first 16 "
             "test samples (seed 0), CFG 1) at 16…256 steps of one schedule per problem; *local order* is log₂ of "
             "the error ratio between consecutive step counts (a p-th order method on a smooth ODE shows ≈ p).", "",
             "| problem / schedule | sampler | " + " | ".join(f"{n} steps" for n in STEPS) + " | local orders |",
             "|---|---|" + "---|" * len(STEPS) + "---|"]
    for problem_name, model_name, scheduler in CASES:
        problem = Problem(problem_name, model_name, 1.0, 16)
        reference, _, accuracy = reference_solution(problem, 1e-7)

        def run(name, steps, problem=problem, scheduler=scheduler):
            return problem.run(comfy.samplers.sampler_object(name), problem.sigmas(scheduler, steps))

        rows = error_vs_nfe(run, SAMPLERS, STEPS, reference)
        for name in SAMPLERS:
            errors = [row["rms_error"] for row in rows if row["sampler"] == name]
            orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
            row = (f"| {problem_name} / {scheduler} (reference ±{accuracy:.0e}) | {name} | "
                   + " | ".join(f"{e:.2e}" for e in errors) + " | " + ", ".join(f"{o:.1f}" for o in orders) + " |")
            print(row, flush=True)
            lines.append(row)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
