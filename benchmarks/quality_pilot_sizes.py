"""Pilot-size rows of the quality benchmark: the Fitted Solver node fitted from pilots of a few latents.

    .venv/bin/python benchmarks/quality.py --pilot-sizes --threads 1 \\
        [--builtin-summary docs/benchmark_dropdown.json] [--out docs/benchmark_pilot_sizes.md]

On every problem of :data:`~benchmarks.quality_setup.PROBLEMS` and NFE budget 4/8/16/32, the Fitted Solver node
with its ``fast`` preset (the benchmark's ``fs_fitted`` configuration: data base of order 3, history 8, 1 model
call per step, so steps = NFE) — what every preset runs on a pilot this small — and the same plus the schedule
search of the ``balanced`` preset (which moves the σ of the grid; still steps = NFE; the presets leave it out
below 16 pilot latents because of what this measures) is fitted on the model family's default plain schedule
(:data:`SCHEDULES`: ``beta`` for flow models, ``karras`` for diffusion models — the schedules of most best built-in
cells) from pilots of
:data:`PILOT_SIZES` latents of noise seed :data:`~benchmarks.quality_setup.PILOT_SEED` (the node computes its own
reference on the pilot and applies its small-pilot rule, :func:`~samplers.fitted.presets.small_pilot_settings`).
The fitted SAMPLER then runs on the 64 test samples of seed 0, and its endpoint RMS error against the tight
``fs_dopri5`` reference of the same noise is reported next to the best built-in sampler × scheduler of the cell,
read from a dropdown (or standard) run's summary JSON (``--builtin-summary``). Target: a pilot of 4 latents at
most half the best built-in's error (ratio ≤ :data:`TARGET_RATIO`) in every cell.

:func:`report` writes the page from the run dict alone (no ComfyUI), so it is unit-tested on a synthetic run.
"""
from __future__ import annotations

import json
import math
import pathlib

from samplers.fitted.presets import MIN_SEARCH_LATENTS, SEARCH_EVALUATIONS, SMALL_PILOT_LATENTS, SMALL_PILOT_RIDGE

PILOT_SIZES = (1, 4, 8)
TARGET_PILOT = 4
TARGET_RATIO = 0.5
SCHEDULES = {"flow": "beta", "diffusion": "karras"}
CONFIGURATION = "fs_fitted"
RESULT_FIELDS = ("problem", "budget", "pilot", "scheduler", "nfe", "rms_error", "median_error", "mode_flip",
                 "fallback", "pilot_error", "pilot_base_error", "held_out_error", "held_out_base_error",
                 "history", "order", "min_ridge", "rule_off_error", "rule_off_fallback", "search_error",
                 "search_fallback")


def builtin_best(summary: dict) -> dict:
    """{(problem, budget): row} of the best built-in row per cell of a quality run's (summary or full) dict."""
    best = {}
    for row in summary.get("results", []):
        if row.get("family") != "built-in" or row.get("budget") is None or not math.isfinite(row["rms_error"]):
            continue
        key = (row["problem"], row["budget"])
        if key not in best or row["rms_error"] < best[key]["rms_error"]:
            best[key] = row
    return best


def load_builtin_summary(paths) -> dict:
    """The built-in part of the summaries at ``paths`` (one path or several; missing files are skipped): their
    source line and the best built-in row per cell over all of them (:func:`builtin_best`, as JSON-ready rows
    with the cell in them); no rows when there is no file."""
    paths = [pathlib.Path(p) for p in ([paths] if isinstance(paths, (str, pathlib.Path)) else paths or [])]
    results, sources = [], []
    for path in paths:
        if path.exists():
            summary = json.loads(path.read_text())
            results += summary.get("results", [])
            sources.append(f"{path.name} ({summary.get('mode', '?')} run, {summary.get('date', '?')}, commit "
                           f"{summary.get('commit', '?')})")
    rows = [{"problem": p, "budget": b, **{k: row[k] for k in ("sampler", "scheduler", "rms_error")}}
            for (p, b), row in sorted(builtin_best({"results": results}).items())]
    return {"source": "; ".join(sources) or None, "rows": rows}


def _ratio_text(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def _ratio(error, best):
    """``error`` over the cell's best built-in error (None without a built-in or a finite error)."""
    if error is None or not best or best["rms_error"] <= 0 or not math.isfinite(error):
        return None
    return error / best["rms_error"]


def _error_and_ratio(error, best, fallback) -> str:
    """'error (ratio)' of a fit, ', base kept' when it fell back to its base update; '—' when not measured."""
    if error is None:
        return "—"
    return f"{error:.2e} ({_ratio_text(_ratio(error, best))})" + (", base kept" if fallback else "")


def _geometric_mean(values) -> float:
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


def report(run: dict) -> tuple[str, dict]:
    """The page (markdown) of a pilot-size run and its per-cell summary {(problem, budget, pilot): {"ratio",
    "search_ratio", "met"}} (ratios of the fast fit and of the fit with the schedule search, None where not
    measured or without a built-in for the cell; ``met``, of the fast fit, is None without a built-in; the target
    applies to pilots of :data:`TARGET_PILOT`). ``run``: ``command``, ``date``, ``commit``, ``machine``,
    ``references``, ``builtin`` (:func:`load_builtin_summary`) and ``results`` (rows of :data:`RESULT_FIELDS`; runs
    written before the schedule search was measured lack its fields)."""
    builtin = {(row["problem"], row["budget"]): row for row in run["builtin"]["rows"]}
    problems = list(dict.fromkeys(row["problem"] for row in run["results"]))
    budgets = sorted({row["budget"] for row in run["results"]})
    pilots = sorted({row["pilot"] for row in run["results"]})
    source = run["builtin"]["source"]
    lines = ["# Fitted Solver from small pilots: 1, 4 and 8 latents", "",
             "What is measured: the Fitted Solver node with its `fast` preset (data base of order 3, history 8, on "
             "the given grid; every preset runs this on a pilot of fewer than "
             f"{MIN_SEARCH_LATENTS} latents) and the same plus the `balanced` preset's schedule search over "
             f"{SEARCH_EVALUATIONS} candidate grids and the first-call placements (1 model call per step either "
             f"way), fitted on pilots of {', '.join(map(str, pilots))} latents (noise seed "
             f"{run.get('pilot_seed', 1)}) from each model family's default schedule (flow: "
             f"{SCHEDULES['flow']}, diffusion: {SCHEDULES['diffusion']}; steps = NFE), then run on the "
             f"{run.get('test_batch', 64)} test samples of seed 0; endpoint RMS error against a tight fs_dopri5 "
             "reference of the same noise, next to the best built-in sampler × scheduler of the cell. Below "
             f"{SMALL_PILOT_LATENTS} latents the node's small-pilot rule keeps the ridge at {SMALL_PILOT_RIDGE:g} "
             "or above (docs/fitted_solver.md); the last column is the fast fit without it. This page is written "
             "by `benchmarks/quality_pilot_sizes.py` from the JSON beside it.", "",
             f"Command: `{run['command']}`  ",
             f"Date: {run['date']}; commit {run.get('commit', 'unknown')}; machine: {run['machine']}.  ",
             "Best built-in per cell from: " + (source or "no built-in summary (ratios not available)") + ".", "",
             "References (fs_dopri5, tight tolerance, same noise): " + "; ".join(
                 f"{name}: {ref['nfe']} NFE, own accuracy {ref['accuracy']:.1e}"
                 for name, ref in run["references"].items()), "",
             f"Target: a pilot of {TARGET_PILOT} latents at most {TARGET_RATIO:g}× the best built-in's error in "
             "every cell (the fast fit). 'base kept': the fit was not better than its base update on the pilot or "
             "on held-out pilot data, so the node samples with the base update (all coefficients 0).", "",
             "| problem | NFE | best built-in | error | pilot | fast: error | ratio | base kept | "
             "with the schedule search: error (ratio) | target met | fast without the small-pilot rule (ratio) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = {}
    for problem in problems:
        for budget in budgets:
            best = builtin.get((problem, budget))
            for pilot in pilots:
                row = next((r for r in run["results"] if r["problem"] == problem and r["budget"] == budget
                            and r["pilot"] == pilot), None)
                if row is None:
                    continue
                ratio = _ratio(row["rms_error"], best)
                met = None if ratio is None else ratio <= TARGET_RATIO
                cells[(problem, budget, pilot)] = {"ratio": ratio, "search_ratio": _ratio(row.get("search_error"),
                                                                                          best), "met": met}
                target = ("—" if pilot != TARGET_PILOT else "n/a" if met is None else "yes" if met else "**no**")
                lines.append(f"| {problem} | {budget} | "
                             + (f"{best['sampler']} / {best['scheduler']} | {best['rms_error']:.2e}" if best
                                else "— | —")
                             + f" | {pilot} | {row['rms_error']:.2e} | {_ratio_text(ratio)} | "
                             f"{'yes' if row['fallback'] else 'no'} | "
                             f"{_error_and_ratio(row.get('search_error'), best, row.get('search_fallback'))} | "
                             f"{target} | "
                             f"{_error_and_ratio(row.get('rule_off_error'), best, row.get('rule_off_fallback'))} |")
    target_cells = {key: cell for key, cell in cells.items() if key[2] == TARGET_PILOT and cell["met"] is not None}
    met = [key for key, cell in target_cells.items() if cell["met"]]
    missed = [key for key, cell in target_cells.items() if not cell["met"]]
    lines += ["", f"Pilot of {TARGET_PILOT}: target (ratio ≤ {TARGET_RATIO:g}) met in {len(met)} of "
              f"{len(target_cells)} cells with a built-in."]
    if missed:
        lines.append("Not met: " + "; ".join(
            f"{p} @ {b} NFE ({_ratio_text(cells[(p, b, s)]['ratio'])})" for p, b, s in missed) + ".")
    for pilot in pilots:
        kept = sum(1 for row in run["results"] if row["pilot"] == pilot and row["fallback"])
        total = sum(1 for row in run["results"] if row["pilot"] == pilot)
        for label, key in (("fast", "ratio"), ("with the schedule search", "search_ratio")):
            ratios = [cell[key] for cell_key, cell in cells.items()
                      if cell_key[2] == pilot and cell[key] is not None]
            if ratios:
                lines.append(f"Pilot of {pilot}, {label}: geometric-mean ratio {_geometric_mean(ratios):.2f} over "
                             f"{len(ratios)} cells, {sum(r <= 1.0 for r in ratios)} at or below the best built-in"
                             + (f"; base kept in {kept} of {total} fits." if label == "fast" else "."))
    compared = [(row["rms_error"], row["rule_off_error"]) for row in run["results"]
                if row.get("rule_off_error") is not None and row["rule_off_error"] > 0 and row["rms_error"] > 0
                and math.isfinite(row["rms_error"]) and math.isfinite(row["rule_off_error"])]
    if compared:
        mean = _geometric_mean([new / old for new, old in compared])
        lines.append(f"Small-pilot rule: lower error than without it in {sum(new < old for new, old in compared)} "
                     f"of {len(compared)} fits, higher in {sum(new > old for new, old in compared)}; "
                     f"geometric-mean error ratio (with / without) {mean:.2f}; worst "
                     f"{max(new / old for new, old in compared):.2f}, best {min(new / old for new, old in compared):.2f}.")
    return "\n".join(lines) + "\n", cells


def write(run: dict, out) -> tuple[str, dict]:
    """Write the page ``out`` (.md) and the run (its .json beside it); returns :func:`report`'s result."""
    out = pathlib.Path(out)
    text, cells = report(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(run, indent=1) + "\n")
    return text, cells


def family_schedule(problem) -> str:
    """The default plain schedule of ``problem``'s model family (:data:`SCHEDULES`)."""
    from ComfyUI_FlowScope.nodes.comfy_sampling import model_family

    return SCHEDULES["flow" if model_family(problem.model_sampling).flow else "diffusion"]


def node_fit(pilot, grid, small_pilot: bool, schedule_search: bool = False):
    """``(FitResult, SAMPLER)`` of the Fitted Solver node's ``fast`` preset (:data:`CONFIGURATION`), or with
    ``schedule_search`` the same plus the schedule search of the ``balanced`` preset (which that preset leaves out
    below :data:`~samplers.fitted.presets.MIN_SEARCH_LATENTS` pilot latents: this measures why), reference rtol
    1e-6 as :func:`benchmarks.harness.fit_solver`, on ``grid`` from ``pilot``, with or without the small-pilot
    rule."""
    from ComfyUI_FlowScope.nodes.comfy_sampling import PlanningSampler
    from ComfyUI_FlowScope.nodes.sampler_nodes import fitted_solver_sampler, solver_fit_plan
    from ComfyUI_FlowScope.samplers.fitted import FitSettings

    from benchmarks.quality_setup import FITTED_SOLVERS

    prediction, order, history = FITTED_SOLVERS[CONFIGURATION]
    settings = FitSettings(prediction, order, history, 1e-6, SEARCH_EVALUATIONS if schedule_search else 0,
                           small_pilot=small_pilot)
    planner = PlanningSampler(solver_fit_plan(settings))
    pilot.problem.run(planner, grid.clone())
    return planner.result, fitted_solver_sampler(planner.result.solver)


def benchmark(problems=None, budgets=None, pilot_sizes=PILOT_SIZES, log=lambda *a: print(*a, flush=True)):
    """``(results, references)``: one row of :data:`RESULT_FIELDS` per problem × budget × pilot size."""
    from benchmarks.comfy_inprocess import boot

    boot()
    from benchmarks.quality_problems import Labeler, Pilot, Problem, metrics, reference_solution
    from benchmarks.quality_setup import BUDGETS, PILOT_SEED, PROBLEMS, TEST_BATCH

    labeler = Labeler()
    results, references = [], {}
    for problem_name, model_name, cfg in PROBLEMS:
        if problems is not None and problem_name not in problems:
            continue
        problem = Problem(problem_name, model_name, cfg, TEST_BATCH["standard"])
        reference, reference_nfe, accuracy = reference_solution(problem, 1e-7)
        reference_modes = labeler.modes(problem, reference)
        references[problem_name] = {"nfe": reference_nfe, "accuracy": accuracy}
        log(f"[{problem_name}] reference: {reference_nfe} NFE, accuracy {accuracy:.2e}")
        scheduler = family_schedule(problem)
        for pilot_size in pilot_sizes:
            pilot = Pilot(problem_name, model_name, cfg, pilot_size, None)
            for budget in budgets or BUDGETS:
                grid = problem.sigmas(scheduler, budget)
                fit, sampler = node_fit(pilot, grid, True)
                samples, nfe = problem.run(sampler, fit.sigmas.float().clone())
                held_out = fit.fit.held_out
                rule_off = {"rule_off_error": None, "rule_off_fallback": None}
                if fit.small_pilot_note:  # the same fit without the small-pilot rule, for comparison
                    off, off_sampler = node_fit(pilot, grid, False)
                    off_samples, _ = problem.run(off_sampler, off.sigmas.float().clone())
                    rule_off = {"rule_off_error": metrics(problem, labeler, off_samples, reference,
                                                          reference_modes)["rms_error"],
                                "rule_off_fallback": off.fit.fallback}
                row = {"problem": problem_name, "budget": budget, "pilot": pilot_size, "scheduler": scheduler,
                       "nfe": nfe, **metrics(problem, labeler, samples, reference, reference_modes),
                       "fallback": fit.fit.fallback, "pilot_error": fit.fit.error,
                       "pilot_base_error": fit.fit.base_error,
                       "held_out_error": None if held_out is None else held_out.error,
                       "held_out_base_error": None if held_out is None else held_out.base_error,
                       "history": fit.settings.history, "order": fit.settings.order,
                       "min_ridge": fit.settings.min_ridge, **rule_off}
                searched, searched_sampler = node_fit(pilot, grid, True, schedule_search=True)
                searched_samples, _ = problem.run(searched_sampler, searched.sigmas.float().clone())
                row.update(search_error=metrics(problem, labeler, searched_samples, reference,
                                                reference_modes)["rms_error"],
                           search_fallback=searched.fit.fallback)
                results.append({key: row[key] for key in RESULT_FIELDS})
                log(f"  pilot {pilot_size} @ {budget}: test error {row['rms_error']:.3e}"
                    f"{' (base kept)' if row['fallback'] else ''}; without the small-pilot rule "
                    f"{row['rule_off_error']}; with the schedule search {row['search_error']:.3e}")
    return results, references, PILOT_SEED, TEST_BATCH["standard"]


def default_builtin_summary():
    """docs/benchmark_dropdown.json, else docs/benchmark_quality.json (the standard run has the same built-ins),
    or None."""
    from benchmarks.harness import ROOT

    return next((p for p in (ROOT / "docs" / "benchmark_dropdown.json", ROOT / "docs" / "benchmark_quality.json")
                 if p.exists()), None)


def run_and_write(args, command: str, out) -> None:
    """``quality.py --pilot-sizes``: run :func:`benchmark` on ``args.problems``/``args.budgets`` and write the page
    ``out`` with the built-ins of ``args.builtin_summary``."""
    import platform

    import torch

    from benchmarks.harness import ROOT, commit, utc_now

    results, references, pilot_seed, test_batch = benchmark(args.problems, args.budgets)
    run = {"command": command, "mode": "pilot-sizes", "date": utc_now(), "commit": commit(),
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
                      f"torch {torch.__version__}",
           "pilot_seed": pilot_seed, "test_batch": test_batch, "references": references,
           "builtin": load_builtin_summary(args.builtin_summary or default_builtin_summary()), "results": results}
    text, cells = write(run, out)
    print(text)
    print(f"wrote {out} and {pathlib.Path(out).with_suffix('.json')}")


def main(argv=None):
    """Rewrite a pilot-size page from its JSON (``python -m benchmarks.quality_pilot_sizes docs/benchmark_pilot_sizes.json
    [--builtin-summary docs/benchmark_dropdown.json]``), optionally with the built-ins of other summaries."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=pathlib.Path, help="a run written by quality.py --pilot-sizes")
    parser.add_argument("--builtin-summary", nargs="+", type=pathlib.Path,
                        help="summary JSON(s) of dropdown or standard runs to take the best built-in per cell from")
    args = parser.parse_args(argv)
    run = json.loads(args.json.read_text())
    if args.builtin_summary:
        run["builtin"] = load_builtin_summary(args.builtin_summary)
    write(run, args.json.with_suffix(".md"))
    print(f"wrote {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
