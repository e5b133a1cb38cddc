"""Quality benchmark: endpoint error vs NFE of every ComfyUI built-in sampler × scheduler and every FlowScope
sampler × schedule, all through ComfyUI's real sampling path (CFGGuider.sample on the demo MODELs).

    .venv/bin/python benchmarks/quality.py            # full run (all samplers × schedulers, batch 64; hours on 2 cores)
    .venv/bin/python benchmarks/quality.py --standard # deterministic samplers, 64 test samples: the published table
    .venv/bin/python benchmarks/quality.py --dropdown # dropdown names only: docs/benchmark_dropdown.md
    .venv/bin/python benchmarks/quality.py --quick --out /tmp/q.md   # CI smoke test (a few minutes)

Problems: the analytic mixture (exact log-density), digits-flow and digits-diffusion with and without CFG.
Reference per problem: fs_dopri5 at a tight tolerance from the same noise; its own accuracy is reported as the
difference to a 10× tighter solve. Budgets count model calls (the CFG batch counts once); a method gets the
largest step count whose NFE fits the budget. Metrics: endpoint RMS error (over samples and dimensions),
median per-sample RMS error, mode-flip rate (mixture component / digit class differs from the reference's),
and on the analytic problem the mean exact log-likelihood shift against the reference samples.

Writes the report (``--out``, default docs/benchmark_quality.md), its plot (.png) and summary (.json) beside it,
and the full results to benchmark-results/ (see :mod:`benchmarks.quality_report`). Configuration and
contenders: :mod:`benchmarks.quality_setup`; problems, reference and metrics: :mod:`benchmarks.quality_problems`.
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import quality_pilot_sizes, quality_report  # noqa: E402
from benchmarks.comfy_inprocess import boot, pack_module  # noqa: E402
from benchmarks.harness import RESULTS_DIR, commit, first_call_starts, utc_now  # noqa: E402
from benchmarks.quality_problems import (Labeler, Pilot, Problem, adaptive_sampler, best_optimized_grid,  # noqa: E402
                                         fitted_sampler, flowscope_sampler, log_refinement, metrics, nfe_model,
                                         optimized_grid, reference_solution, run_in_budget, start_grids,
                                         trajectory_adaptive_grid)
from benchmarks.quality_setup import (ADAPTIVE_STEP_COST, BUDGETS, FITTED_JOINT, FITTED_REFINED,  # noqa: E402
                                      FITTED_SOLVERS, FLOWSCOPE_VARIANTS, JOINT_EVALUATIONS, OPTIMIZED,
                                      OPTIMIZER_EVALUATIONS, PILOT_BATCH, PILOT_SEED, PROBLEMS, REFINE_ITERATIONS,
                                      REFINE_PILOT_BATCH, TEST_BATCH, TRAJECTORY_ADAPTIVE, contenders)


def benchmark(mode: str, log=lambda *a: print(*a, flush=True), problems=None, budgets=None):
    """Rows of every contender on every problem and budget of ``mode``; ``problems``/``budgets`` (names, NFE
    budgets) restrict a run to some cells — each cell's contenders are the same as in the whole run."""
    quick = mode == "quick"
    problem_specs = [spec for spec in (PROBLEMS[:2] + PROBLEMS[3:4] if quick else PROBLEMS)
                     if problems is None or spec[0] in problems]
    selected_budgets = [b for b in ((4, 8) if quick else BUDGETS) if budgets is None or b in budgets]
    if not problem_specs or not selected_budgets:
        raise SystemExit(f"quality.py: the {mode} preset has none of the problems {problems} or none of the "
                         f"budgets {budgets}")
    budgets = selected_budgets
    boot()
    import comfy.samplers

    sampler_info = pack_module("samplers").SAMPLER_INFO
    batch, pilot_batch = TEST_BATCH[mode], PILOT_BATCH[mode]
    labeler = Labeler()
    results, references = [], {}
    start_schedulers = sorted({sch for _, _, sch in contenders(mode)
                               if sch not in (TRAJECTORY_ADAPTIVE, OPTIMIZED, FITTED_JOINT, FITTED_REFINED)})
    for problem_name, model_name, cfg in problem_specs:
        problem = Problem(problem_name, model_name, cfg, batch)
        started = time.time()
        reference, reference_nfe, accuracy = reference_solution(problem, 1e-5 if quick else 1e-7)
        reference_modes = labeler.modes(problem, reference)
        references[problem_name] = {"nfe": reference_nfe, "accuracy": accuracy}
        log(f"[{problem_name}] reference: {reference_nfe} NFE, accuracy {accuracy:.2e}")
        grids, nfe_models, optimized_grids = {}, {}, {}
        plain_fits = {}  # (sampler, budget) → [(pilot error, sigmas)] of the plain fits: where joint/refined start
        pilots = {}  # batch → Pilot (seed PILOT_SEED); the fits' pilot of pilot_batch samples has its reference

        def pilot(samples=pilot_batch):
            if samples not in pilots:
                with_reference = samples == pilot_batch
                pilots[samples] = Pilot(problem_name, model_name, cfg, samples, 1e-6 if with_reference else None)
                if with_reference:
                    log(f"[{problem_name}] pilot reference (seed {PILOT_SEED}): {pilots[samples].reference_nfe} NFE, "
                        f"accuracy {pilots[samples].accuracy:.2e}")
            return pilots[samples]

        for family, sampler_name, scheduler in contenders(mode):
            if sampler_name in FITTED_SOLVERS:
                for budget in budgets:  # 1 NFE per step: steps = budget
                    if scheduler in (FITTED_JOINT, FITTED_REFINED):
                        starts = start_grids(plain_fits.get((sampler_name, budget), []))
                        sigmas = starts[0] if starts else None
                    elif scheduler == OPTIMIZED:
                        sigmas = best_optimized_grid(optimized_grids, budget)
                    else:
                        sigmas = problem.sigmas(scheduler, budget)
                    if sigmas is None:
                        continue
                    evaluations = JOINT_EVALUATIONS[mode] if scheduler in (FITTED_JOINT, FITTED_REFINED) else 0
                    iterations = REFINE_ITERATIONS[mode][budget] if scheduler == FITTED_REFINED else 0
                    fit_pilot = pilot(REFINE_PILOT_BATCH[mode][budget] if scheduler == FITTED_REFINED else pilot_batch)

                    def fit_on(start, fit_pilot=fit_pilot, evaluations=evaluations, iterations=iterations,
                               configuration=FITTED_SOLVERS[sampler_name]):
                        return fitted_sampler(fit_pilot, start, configuration, evaluations, iterations)

                    sampler, sigmas, fit = fit_on(sigmas)
                    if scheduler == FITTED_REFINED and fit.refinement.iterations < iterations and len(starts) > 1:
                        log_refinement(log, sampler_name, budget, fit_pilot, fit, "best plain-fit grid; stopped early")
                        retry = fit_on(starts[1])
                        log_refinement(log, sampler_name, budget, fit_pilot, retry[2], "second-best plain-fit grid")
                        if retry[2].refinement.error < fit.refinement.error:
                            sampler, sigmas, fit = retry
                    samples, nfe = problem.run(sampler, sigmas.clone())
                    if scheduler == FITTED_JOINT:
                        search = fit.schedule_search
                        log(f"  {sampler_name}/{scheduler}@{budget}: pilot error {search.base_error:.2e} → "
                            f"{search.error:.2e} ({search.evaluations} fits)")
                    elif scheduler == FITTED_REFINED:
                        log_refinement(log, sampler_name, budget, fit_pilot, fit, "kept")
                    else:
                        log(f"  {sampler_name}/{scheduler}@{budget}: pilot error {fit.fit.base_error:.2e} → "
                            f"{fit.fit.error:.2e}")
                        plain_fits.setdefault((sampler_name, budget), []).append((fit.fit.error, sigmas))
                    results.append({"problem": problem_name, "family": family, "sampler": sampler_name,
                                    "scheduler": scheduler, "budget": budget, "nfe": nfe, "steps": budget,
                                    **metrics(problem, labeler, samples, reference, reference_modes)})
                continue
            order = sampler_info.get(sampler_name, {}).get("order", 1) if family == "FlowScope" else 1
            if sampler_name in ADAPTIVE_STEP_COST:
                method = sampler_name.removeprefix("fs_")

                def factory(budget=None, method=method):
                    return adaptive_sampler(method, nfe_budget=budget, max_nfe=budget, rtol=1e-3, atol=1e-4)
            elif sampler_name in FLOWSCOPE_VARIANTS:
                def factory(budget=None, name=sampler_name):
                    function_name, options = FLOWSCOPE_VARIANTS[name]
                    return flowscope_sampler(function_name, **options)
            else:
                def factory(budget=None, name=sampler_name):
                    return comfy.samplers.sampler_object(name)
            try:
                probe_scheduler = "simple" if scheduler in (TRAJECTORY_ADAPTIVE, OPTIMIZED) else scheduler
                if sampler_name not in nfe_models:  # NFE per step depends on the method, not the schedule
                    nfe_models[sampler_name] = (nfe_model(problem, factory(64), probe_scheduler)
                                                if sampler_name not in ADAPTIVE_STEP_COST else (1, 0))
                    log(f"  {sampler_name}: NFE(steps) = {nfe_models[sampler_name][0]}·steps "
                        f"{nfe_models[sampler_name][1]:+d}")
                slope_intercept = nfe_models[sampler_name]
            except Exception as error:  # a sampler that cannot run this problem at all is reported, not hidden
                log(f"  {sampler_name}/{scheduler}: fails ({type(error).__name__}: {error})")
                results.append({"problem": problem_name, "family": family, "sampler": sampler_name,
                                "scheduler": scheduler, "budget": None, "failed": f"{type(error).__name__}: {error}"})
                continue
            for budget in budgets:
                if budget < ADAPTIVE_STEP_COST.get(sampler_name, 0):
                    continue  # one embedded step does not fit this budget
                sigmas_for = None
                if scheduler == TRAJECTORY_ADAPTIVE:
                    def sigmas_for(steps, order=order):
                        return trajectory_adaptive_grid(problem, steps, min(order, 4), grids)
                elif scheduler == OPTIMIZED:
                    def sigmas_for(steps, name=sampler_name, factory=factory, budget=budget):
                        sigmas, start, result = optimized_grid(
                            pilot(), name, lambda: factory(budget), steps, start_schedulers,
                            OPTIMIZER_EVALUATIONS[mode], optimized_grids)
                        log(f"  {name}/{OPTIMIZED}@{steps} steps: from {start}, pilot error "
                            f"{result.base_error:.2e} → {result.error:.2e} ({result.evaluations} runs)")
                        return sigmas.clone()
                try:
                    outcome = run_in_budget(problem, lambda: factory(budget), probe_scheduler, budget,
                                            slope_intercept, sigmas_for)
                except Exception as error:
                    outcome = None
                    log(f"  {sampler_name}/{scheduler}@{budget}: fails ({type(error).__name__}: {error})")
                if outcome is None:
                    continue
                samples, nfe, steps = outcome
                row = {"problem": problem_name, "family": family, "sampler": sampler_name, "scheduler": scheduler,
                       "budget": budget, "nfe": nfe, "steps": steps,
                       **metrics(problem, labeler, samples, reference, reference_modes)}
                results.append(row)
        log(f"[{problem_name}] done in {time.time() - started:.0f} s")
    return results, references


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few samplers, 3 problems, budgets 4 and 8 (CI)")
    parser.add_argument("--standard", action="store_true",
                        help="all problems and budgets, deterministic samplers only, 64 test samples "
                             "(about 100 min on 2 cores as two parallel 1-thread parts merged with --merge)")
    parser.add_argument("--dropdown", action="store_true",
                        help="the standard preset's dropdown-only part: every deterministic sampler name × scheduler "
                             "name with default options, no pilot-based methods (its own page)")
    parser.add_argument("--pilot-sizes", action="store_true",
                        help="the Fitted Solver node from pilots of 1, 4 and 8 latents against the best built-in "
                             "(its own page, default docs/benchmark_pilot_sizes.md; benchmarks/quality_pilot_sizes.py)")
    parser.add_argument("--builtin-summary", nargs="+", type=pathlib.Path,
                        help="--pilot-sizes: the summary JSON(s) of dropdown or standard runs the best built-in per "
                             "cell is read from (default docs/benchmark_dropdown.json, else benchmark_quality.json)")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--problems", nargs="+", choices=[name for name, _, _ in PROBLEMS],
                        help="only these problems (one-off measurements; the published table has all)")
    parser.add_argument("--budgets", nargs="+", type=int, choices=BUDGETS, help="only these NFE budgets")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR,
                        help="where the full results go (default benchmark-results/, ignored by git)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 per process for parallel parts)")
    parser.add_argument("--merge", nargs="+", type=pathlib.Path, metavar="JSON",
                        help="write one report from the JSON files (full results in benchmark-results/, or the "
                             "summaries beside the reports) of runs of the same mode on disjoint problems (e.g. "
                             "the standard run as two processes with --threads 1 and --problems) instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = ("quick" if args.quick else "standard" if args.standard else "dropdown" if args.dropdown
            else "pilot-sizes" if args.pilot_sizes else "full")
    command = "python benchmarks/quality.py" + ("" if mode == "full" else f" --{mode}")
    if args.problems:
        command += " --problems " + " ".join(f"'{name}'" for name in args.problems)
    if args.budgets:
        command += " --budgets " + " ".join(map(str, args.budgets))
    if mode == "pilot-sizes":
        return quality_pilot_sizes.run_and_write(args, command, args.out or ROOT / "docs" / "benchmark_pilot_sizes.md")
    args.out = args.out or ROOT / "docs" / ("benchmark_dropdown.md" if mode == "dropdown" else "benchmark_quality.md")
    if args.merge:
        run = quality_report.merged_runs(args.merge, mode)
    else:
        results, references = benchmark(mode, problems=args.problems, budgets=args.budgets)
        run = {"command": command, "mode": mode, "references": references, "results": results,
               "sections": list(quality_report.SECTIONS)}
    run.update(date=utc_now(), commit=commit(), first_call_starts=list(first_call_starts()),
               machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
                       f"torch {torch.__version__}")
    run.pop("note", None)
    raw = args.results_dir / args.out.with_suffix(".json").name
    text, cells = quality_report.write(run, args.out, raw)
    met = sum(1 for cell in cells.values() if cell["met"])
    print(text)
    print(f"target met in {met} of {len(cells)} problem × budget cells; wrote {args.out} (summary "
          f"{args.out.with_suffix('.json')}, full results {raw})")


if __name__ == "__main__":
    main()
