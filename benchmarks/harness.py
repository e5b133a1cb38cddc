"""Shared pieces of the benchmark scripts: paths, robust statistics, the environment a report states, result
files, and the one place a benchmark reaches the pack's Fitted Solver fit.

Each benchmark script (``quality.py``, ``overhead.py``, ``memory.py``, ``gpu_check.py``, ``convergence.py``) writes
its markdown report where ``--out`` says; full raw results go to :data:`RESULTS_DIR` (``benchmark-results/``,
ignored by git and left out of the Registry archive), and only what the published tables and plots need is
committed under ``docs/``.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "benchmark-results"


def median(values):
    return statistics.median(values) if values else float("nan")


def quartiles(values):
    """(q1, q3) of ``values`` (inclusive method); a single value is its own range."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def commit() -> str:
    """The short commit of the checkout in backticks, flagged when samplers/ or nodes/ have uncommitted changes."""
    try:
        text = "`{}`".format(subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or "unknown")
        if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "samplers", "nodes"], cwd=ROOT).returncode:
            text += " + uncommitted changes to samplers/ or nodes/"
    except OSError:
        text = "unknown"
    return text


def environment(device: str) -> dict:
    """Date, commit, torch/Python versions, machine and torch threads, as a report's header states them."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores ({platform.machine()})"
    return dict(date=datetime.date.today().isoformat(), commit=commit(), torch=torch.__version__,
                python=platform.python_version(), machine=name, threads=torch.get_num_threads())


def utc_now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"


def docstring_markdown(module_doc: str, first: int, last: int) -> str:
    """Paragraphs ``first..last`` of a module docstring with reST roles turned into markdown code."""
    text = "\n\n".join(module_doc.split("\n\n")[first:last + 1])
    return re.sub(r":\w+:`~?\.*([^`]+)`", r"`\1`", text).replace("``", "`").replace("\n", " ")


def write_json(path: pathlib.Path, data, indent=1) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=str), encoding="utf-8")
    return path


def write_report(out, text: str, results: dict, results_dir=RESULTS_DIR) -> pathlib.Path:
    """Write the markdown report ``out`` and its full results (JSON, same name) to ``results_dir``; returns that
    JSON's path."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return write_json(pathlib.Path(results_dir) / out.with_suffix(".json").name, results)


def fit_solver(run, grid, prediction: str, order: int, history: int, rtol: float, schedule_evaluations: int = 0,
               refine_iterations: int = 0) -> tuple:
    """The FlowScope · Fitted Solver node's fit on ``grid`` (SIGMAS or step count, as ``run`` takes it), run by
    ``run(planner, grid)`` on the pilot: ``(FitResult, SAMPLER)`` — the fit (solver, SIGMAS, reference NFE, pilot
    errors, schedule search and refinement when asked for) and the SAMPLER the node outputs."""
    from ComfyUI_FlowScope.nodes.comfy_sampling import PlanningSampler
    from ComfyUI_FlowScope.nodes.sampler_nodes import fitted_solver_sampler, solver_fit_plan
    from ComfyUI_FlowScope.samplers.fitted import FitSettings

    planner = PlanningSampler(solver_fit_plan(FitSettings(prediction, order, history, rtol, schedule_evaluations,
                                                          refine_iterations)))
    run(planner, grid)
    return planner.result, fitted_solver_sampler(planner.result.solver)


def first_call_starts() -> tuple:
    """The Fitted Solver's candidate first-call starts r (first model call at (r·x, r·σ_max)), as its reports state."""
    from benchmarks.comfy_inprocess import boot, pack_module

    boot()
    return tuple(pack_module("samplers.fitted").FIRST_CALL_STARTS)
