"""Tables, plot and result files of the quality benchmark, written from its results alone.

A run (``benchmarks/quality.py``) writes its full raw results (every contender × problem × budget) to
``benchmark-results/<name>.json`` and the summary — the rows the tables and the plot read: per problem and
budget the best built-in, the best FlowScope configuration and the best FlowScope sampler on a plain schedule,
plus any configuration that failed — next to its markdown report (``docs/benchmark_quality.json``). The report
and plot are regenerated from either file without running anything::

    .venv/bin/python -m benchmarks.quality_report docs/benchmark_quality.json   # rewrites the .md and .png beside it
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

from benchmarks.harness import first_call_starts, write_json
from benchmarks.quality_setup import (FITTED_JOINT, FITTED_REFINED, FITTED_SOLVERS, FLOWSCOPE_VARIANTS,
                                      JOINT_EVALUATIONS, OPTIMIZED, OPTIMIZER_EVALUATIONS, PILOT_BATCH, PILOT_SEED, PROBLEMS, REFINE_ITERATIONS,
                                      REFINE_PILOT_BATCH, SKIPPED_BUILTINS, TEST_BATCH, TRAJECTORY_ADAPTIVE)

FAMILIES = ("built-in", "FlowScope")
RUN_FIELDS = ("command", "mode", "date", "machine", "commit", "note", "first_call_starts", "references", "sections")
# Optional report sections a run's results support (runs saved without "sections" predate them).
SECTIONS = ("dropdown",)


def best_rows(results):
    best = {}
    for row in results:
        if row.get("budget") is None or not math.isfinite(row["rms_error"]):
            continue
        key = (row["problem"], row["budget"], row["family"])
        if key not in best or row["rms_error"] < best[key]["rms_error"]:
            best[key] = row
    return best


def problem_order(results) -> list:
    """The problems of ``results`` in the order of :data:`PROBLEMS` (merged parts may list them in any order)."""
    order = [name for name, _, _ in PROBLEMS]
    return sorted({row["problem"] for row in results}, key=order.index)



def plain_rows(results):
    """Results without the pilot-based methods (trajectory-adaptive or optimized schedule, fitted solver)."""
    return [row for row in results if row.get("scheduler") not in (TRAJECTORY_ADAPTIVE, OPTIMIZED)
            and row.get("sampler") not in FITTED_SOLVERS]


def dropdown_rows(results):
    """Built-in rows and the FlowScope rows a KSampler user gets: a registered ``fs_`` sampler name with its default
    options on a scheduler name (no pilot-based method, no option variant)."""
    return [row for row in plain_rows(results)
            if row.get("family") == "built-in" or row.get("sampler") not in FLOWSCOPE_VARIANTS]


FLOW_PROBLEMS = ("analytic", "digits-flow", "digits-flow cfg 3", "analytic-narrow")


def recommendations(results) -> list:
    """Per model family (flow: the problems in :data:`FLOW_PROBLEMS`, diffusion: the others) and budget, the
    FlowScope dropdown configuration (sampler name / scheduler name) with the lowest geometric mean of its error
    ratios to each problem's best built-in, among those measured on every problem of the family: rows of
    ``{"family", "budget", "sampler", "scheduler", "mean_ratio", "worst_ratio"}``."""
    best = best_rows(results)
    problems = problem_order(results)
    chosen = []
    for family, members in (("flow", [p for p in problems if p in FLOW_PROBLEMS]),
                            ("diffusion", [p for p in problems if p not in FLOW_PROBLEMS])):
        budgets = sorted({row["budget"] for row in results if row.get("budget") and row["problem"] in members})
        for budget in budgets:
            ratios = {}
            for row in dropdown_rows(results):
                builtin = best.get((row["problem"], budget, "built-in"))
                if (row.get("family") == "FlowScope" and row["problem"] in members and row["budget"] == budget
                        and builtin and math.isfinite(row["rms_error"])):
                    ratios.setdefault((row["sampler"], row["scheduler"]), []).append(
                        row["rms_error"] / builtin["rms_error"])
            complete = {key: values for key, values in ratios.items() if len(values) == len(members)}
            if complete:
                key = min(complete, key=lambda k: sum(math.log(r) for r in complete[k]))
                chosen.append({"family": family, "budget": budget, "sampler": key[0], "scheduler": key[1],
                               "mean_ratio": math.exp(sum(math.log(r) for r in complete[key]) / len(members)),
                               "worst_ratio": max(complete[key])})
    return chosen


def readme_recommendations(run: dict) -> str:
    """The README's "which sampler" table (markdown, no trailing newline) from a dropdown run or its summary: per
    model family and NFE budget the recommended sampler / scheduler and its geometric-mean error ratio to the
    best built-in."""
    chosen = run.get("recommendations") or recommendations(run["results"])
    lines = ["| model family | NFE | sampler / scheduler | error vs best built-in (geometric mean, worst) |",
             "|---|---|---|---|"]
    lines += [f"| {row['family']} | {row['budget']} | `{row['sampler']}` / `{row['scheduler']}` | "
              f"{row['mean_ratio']:.2f}×, {row['worst_ratio']:.2f}× |" for row in chosen]
    return "\n".join(lines)


def summarize(run: dict) -> dict:
    """The run with only the result rows its tables and plot read: each problem × budget × family's best row
    (over all configurations, over :func:`plain_rows` and over :func:`dropdown_rows`) and the failed
    configurations (rows keep their order, so ties resolve as in the full results), plus the
    :func:`recommendations` computed from all rows."""
    results = run["results"]
    keep = set()
    for rows in (results, plain_rows(results), dropdown_rows(results)):
        keep |= {id(row) for row in best_rows(rows).values()}
    rows = [row for row in results if id(row) in keep or row.get("failed")]
    summary = {**{key: run[key] for key in RUN_FIELDS if key in run}, "results": rows}
    if "dropdown" in run.get("sections", ()):
        summary["recommendations"] = run.get("recommendations") or recommendations(results)
    return summary


def report(run: dict) -> tuple[str, dict]:
    """(markdown, {(problem, budget): {"ratio", "met"}}) of a run's results (full or :func:`summarize`d)."""
    results, references, mode = run["results"], run["references"], run["mode"]
    first_call_starts = run["first_call_starts"]
    best = best_rows(results)
    problems = problem_order(results)
    budgets = sorted({row["budget"] for row in results if row.get("budget")})
    if mode == "dropdown":
        return dropdown_report(run, problems, budgets)
    lines = [
        "# Quality benchmark: endpoint error vs NFE", "",
        "What is measured: the endpoint error against a tight reference solve of the same noise, at NFE budgets of "
        "4–32 model calls, of every ComfyUI built-in sampler × scheduler and every FlowScope sampler × schedule "
        "(including the pilot-based ones: trajectory-adaptive schedule, Optimized Schedule, Fitted Solver), all "
        "through ComfyUI's real sampling path on the pack's demo models. Definitions: `benchmarks/quality.py` "
        "(the run), `benchmarks/quality_setup.py` (problems and contenders), `benchmarks/quality_problems.py` "
        "(reference, metrics, budgets), `diagnostics/error_vs_nfe.py` (the error measure, shared with the Compare "
        "Samplers node); this page and its plot are written by "
        "`benchmarks/quality_report.py` from the summary JSON beside it.", "",
        f"Command: `{run['command']}`  ",
        f"Date: {run['date']}; commit {run.get('commit', 'unknown')}; machine: {run['machine']}; mode: {mode}."
        + (f"  \n{run['note']}" if run.get("note") else ""), "",
        "References (fs_dopri5, tight tolerance, same noise): " + "; ".join(
            f"{name}: {ref['nfe']} NFE, own accuracy {ref['accuracy']:.1e}" for name, ref in references.items()), "",
        f"Best configuration per family and budget, measured on {TEST_BATCH[mode]} samples of noise seed 0 (RMS error "
        "over samples and latent dimensions; mode flip = share "
        "of samples whose mixture component / digit class differs from the reference's; Δlog p = mean exact "
        "log-likelihood shift against the reference, analytic only). The ratio is FlowScope's best error over the "
        "built-in best; the target is ≤ 0.5 with no worse mode-flip rate.", "",
        "| problem | NFE | best built-in (sampler / scheduler) | error | flips | best FlowScope (sampler / schedule) | "
        "error | flips | ratio | target met |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for problem in problems:
        for budget in budgets:
            builtin, ours = best.get((problem, budget, "built-in")), best.get((problem, budget, "FlowScope"))
            if not builtin or not ours:
                continue
            ratio = ours["rms_error"] / builtin["rms_error"] if builtin["rms_error"] > 0 else float("inf")
            met = ratio <= 0.5 and ours["mode_flip"] <= builtin["mode_flip"]
            summary[(problem, budget)] = {"ratio": ratio, "met": met}
            lines.append(
                f"| {problem} | {budget} | {builtin['sampler']} / {builtin['scheduler']} ({builtin['nfe']}) | "
                f"{builtin['rms_error']:.2e} | {builtin['mode_flip']:.2f} | {ours['sampler']} / {ours['scheduler']} "
                f"({ours['nfe']}) | {ours['rms_error']:.2e} | {ours['mode_flip']:.2f} | {ratio:.2f} | "
                f"{'yes' if met else 'no'} |")
    analytic = [row for row in results if row["problem"] == "analytic" and row.get("budget")]
    if analytic:
        lines += ["", "Analytic problem, Δlog p of the best configurations (nats per sample):", "",
                  "| NFE | built-in | FlowScope |", "|---|---|---|"]
        for budget in budgets:
            builtin, ours = best.get(("analytic", budget, "built-in")), best.get(("analytic", budget, "FlowScope"))
            if builtin and ours:
                lines.append(f"| {budget} | {builtin['loglik_shift']:+.3f} | {ours['loglik_shift']:+.3f} |")
    plain = best_rows(plain_rows(results))
    lines += ["", "Without the pilot-based methods (no trajectory-adaptive or optimized schedule, no fitted solver): "
              "the best FlowScope sampler on a plain schedule, against the same built-in best:", "",
              "| problem | NFE | best FlowScope (sampler / schedule) | error | flips | ratio |", "|---|---|---|---|---|---|"]
    for problem in problems:
        for budget in budgets:
            builtin, ours = best.get((problem, budget, "built-in")), plain.get((problem, budget, "FlowScope"))
            if builtin and ours and builtin["rms_error"] > 0:
                lines.append(f"| {problem} | {budget} | {ours['sampler']} / {ours['scheduler']} ({ours['nfe']}) | "
                             f"{ours['rms_error']:.2e} | {ours['mode_flip']:.2f} | "
                             f"{ours['rms_error'] / builtin['rms_error']:.2f} |")
    if "dropdown" in run.get("sections", ()):
        lines += dropdown_section(run, problems, budgets)[0]
    failed = [row for row in results if row.get("failed")]
    if failed:
        lines += ["", "Configurations that could not run: " + "; ".join(
            f"{row['problem']}: {row['sampler']}/{row['scheduler']} ({row['failed'][:80]})" for row in failed[:20])]
    lines += ["", "Skipped built-ins: " + "; ".join(f"{k} ({v})" for k, v in SKIPPED_BUILTINS.items()),
              f"`{TRAJECTORY_ADAPTIVE}` is the trajectory-adaptive schedule; its 16-step Heun pilot (32 NFE, once "
              "per prompt) is not counted in the budget.",
              f"`{OPTIMIZED}` is the Optimized Schedule node: fitted on {PILOT_BATCH[mode]} samples of pilot noise "
              f"of seed {PILOT_SEED} (the table measures seed 0) from the pilot's best dropdown schedule, "
              f"{OPTIMIZER_EVALUATIONS[mode]} pilot runs "
              "of the sampler plus one reference solve, once per model, sampler and step count; not counted in the "
              "budget.",
              "`fs_fitted` / `fs_fitted_v` are the Fitted Solver node (base update data / velocity, order 3, history "
              "8, guidance history 2: with CFG the conditional and unconditional predictions are fitted apart) "
              f"fitted on the same pilot noise (seed {PILOT_SEED}) for each σ grid: one reference solve with "
              f"states at every grid σ plus 2 × steps model calls, not counted in the budget; on `{OPTIMIZED}` it "
              "uses the optimized grid with the lowest pilot error for that step count. "
              f"`fs_fitted / {FITTED_JOINT}` is the same node with `optimize_schedule` on: one reference solve stored "
              f"at 256 σ, then {JOINT_EVALUATIONS[mode]} candidate warps of the grid whose plain fit had the lowest "
              "pilot error, each fitted with its first model call at (r·x, r·σ_max) for r in "
              f"{', '.join(f'{r:g}' for r in first_call_starts)} (where r·σ_max lies above the grid's second σ) and "
              "scored by the best fit on the pilot (N model calls per fit); the table measures "
              f"the SIGMAS the node returns. `fs_fitted / {FITTED_REFINED}` is the node with both `optimize_schedule` "
              "and `refine_iterations` (" + ", ".join(
                  f"{count} at {budget} NFE" for budget, count in REFINE_ITERATIONS[mode].items()) + "), fitted on a "
              "pilot of (" + ", ".join(
                  f"{batch} samples at {budget} NFE" for budget, batch in REFINE_PILOT_BATCH[mode].items()) + "; "
              f"seed {PILOT_SEED}; the pilot batch is the node's latent batch): the same joint search from that best "
              "grid, then end-to-end Levenberg–Marquardt on all coefficients, every σ node after the first and the "
              "first call's (a, t) against the pilot endpoint (one pilot run per parameter per iteration, "
              "started at the step it first acts at), each step kept only if the error falls on both halves of "
              "the pilot (when none does at any damping, if their least-trimmed sums fall: each half without its "
              "largest 2 % of per-sample errors), the iterate with the lowest held-out error returned; when a "
              "refinement stops before its iterations are used up, the benchmark runs the node once more from the "
              "second-best plain-fit grid and keeps the run with the lower pilot error; the table measures the "
              "refined SIGMAS the node returns."]
    return "\n".join(lines) + "\n", summary



def run_header(run: dict) -> list[str]:
    references = run["references"]
    return [f"Command: `{run['command']}`  ",
            f"Date: {run['date']}; commit {run.get('commit', 'unknown')}; machine: {run['machine']}; "
            f"mode: {run['mode']}." + (f"  \n{run['note']}" if run.get("note") else ""), "",
            "References (fs_dopri5, tight tolerance, same noise): " + "; ".join(
                f"{name}: {ref['nfe']} NFE, own accuracy {ref['accuracy']:.1e}" for name, ref in references.items())]


def dropdown_report(run: dict, problems, budgets) -> tuple[str, dict]:
    """The page of a ``--dropdown`` run (the quality benchmark restricted to the sampler and scheduler names) and
    its per-cell summary (:func:`dropdown_section`)."""
    lines = ["# Dropdown benchmark: sampler names against ComfyUI's built-ins, no pilot", "",
             "What is measured: the quality benchmark (`benchmarks/quality.py --dropdown`) restricted to what a user "
             "picks in KSampler's dropdowns: every deterministic built-in sampler × scheduler and every "
             "deterministic FlowScope sampler name (default options) × every scheduler name, through ComfyUI's "
             "real sampling path on the demo models; endpoint RMS error against a tight reference solve of the "
             f"same noise ({TEST_BATCH[run['mode']]} samples of seed 0) at NFE budgets of 4–32 model calls (a "
             "method gets the largest step count whose NFE fits). This page is written by "
             "`benchmarks/quality_report.py` from the summary JSON beside it.", "", *run_header(run)]
    section, cells = dropdown_section(run, problems, budgets)
    return "\n".join(lines + section) + "\n", cells


def dropdown_section(run: dict, problems, budgets) -> tuple[list[str], dict]:
    """The "dropdown only" summary: the best FlowScope sampler name (default options) on any scheduler name against
    the best built-in, per cell (target ≤ 0.8×, never above 1.0×), and the recommended name per model family and
    budget (:func:`recommendations`, from the summary when the run is one); returns its lines and
    {(problem, budget): {"ratio", "met"}}."""
    results = run["results"]
    best, dropdown = best_rows(results), best_rows(dropdown_rows(results))
    cells = {}
    lines = ["", "Dropdown only — what a KSampler user gets without any pilot: the best FlowScope sampler name with "
             "its default options on any scheduler name, against the best built-in sampler × scheduler "
             "(target: ≤ 0.80 in every cell, never above 1.00):", "",
             "| problem | NFE | best built-in | error | best FlowScope name / scheduler | error | flips | ratio | "
             "target met |", "|---|---|---|---|---|---|---|---|---|"]
    for problem in problems:
        for budget in budgets:
            builtin, ours = best.get((problem, budget, "built-in")), dropdown.get((problem, budget, "FlowScope"))
            if builtin and ours and builtin["rms_error"] > 0:
                ratio = ours["rms_error"] / builtin["rms_error"]
                cells[(problem, budget)] = {"ratio": ratio, "met": ratio <= 0.8}
                lines.append(f"| {problem} | {budget} | {builtin['sampler']} / {builtin['scheduler']} | "
                             f"{builtin['rms_error']:.2e} | {ours['sampler']} / {ours['scheduler']} | "
                             f"{ours['rms_error']:.2e} | {ours['mode_flip']:.2f} | {ratio:.2f} | "
                             f"{'yes' if ratio <= 0.8 else 'no (≤ 1.0)' if ratio <= 1.0 else 'no'} |")
    chosen = run.get("recommendations") or recommendations(results)
    if chosen:
        families = [(name, ", ".join(p for p in problems if (p in FLOW_PROBLEMS) == (name == "flow")))
                    for name in ("flow", "diffusion")]
        lines += ["", "One configuration per model family and budget: the dropdown sampler / scheduler with the lowest "
                  "geometric mean of its error ratios to each problem's best built-in ("
                  + "; ".join(f"{name}: {members}" for name, members in families if members)
                  + "), and its worst ratio:", "",
                  "| model family | NFE | sampler / scheduler | geometric-mean ratio | worst ratio |",
                  "|---|---|---|---|---|"]
        for row in chosen:
            lines.append(f"| {row['family']} | {row['budget']} | {row['sampler']} / {row['scheduler']} | "
                         f"{row['mean_ratio']:.2f} | {row['worst_ratio']:.2f} |")
    return lines, cells


COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def chart(results, path) -> None:
    """Best endpoint error vs NFE budget, one colour per problem, built-in dashed and FlowScope solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_rows(results)
    figure, axes = plt.subplots(figsize=(10, 6.5), dpi=100)
    for index, problem in enumerate(problem_order(results)):
        for family, style, marker in zip(FAMILIES, ("--", "-"), ("o", "s")):
            points = sorted((budget, row["rms_error"]) for (p, budget, f), row in best.items()
                            if p == problem and f == family)
            if points:
                axes.plot([b for b, _ in points], [e for _, e in points], style, marker=marker, markersize=4,
                          linewidth=1.8, color=COLORS[index % len(COLORS)], label=f"{problem} · {family}")
    axes.set(xscale="log", yscale="log", xlabel="NFE budget", ylabel="endpoint RMS error",
             title="Best endpoint error vs NFE (dashed: best built-in, solid: best FlowScope)")
    budgets = sorted({budget for _, budget, _ in best})
    axes.set_xticks(budgets, [str(b) for b in budgets])
    axes.minorticks_off()
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def merged_runs(paths, mode) -> dict:
    """The union of runs saved by ``quality.py`` (full or summary JSON), each of ``mode``, on problems no other
    part ran (their cells would otherwise be counted twice)."""
    results, references, commands, runs = [], {}, [], []
    for path in paths:
        run = json.loads(pathlib.Path(path).read_text())
        if run.get("mode") != mode:
            raise SystemExit(f"quality.py --merge: {path} is a {run.get('mode')!r} run, not {mode!r}")
        overlap = sorted(set(run["references"]) & set(references))
        if overlap:
            raise SystemExit(f"quality.py --merge: {path} repeats the problems {overlap}")
        results += run["results"]
        references.update(run["references"])
        commands.append(run["command"])
        runs.append(run)
    last = runs[-1]
    return {**{key: last[key] for key in RUN_FIELDS if key in last}, "references": references, "results": results,
            "command": " + ".join(commands) + " (parts merged with --merge)"}


def write(run: dict, out: pathlib.Path, raw: pathlib.Path | None = None) -> tuple[str, dict]:
    """Write the report ``out`` (.md), its plot (.png) and the summary (.json) beside it, and the full ``run``
    to ``raw`` when given; returns :func:`report`'s (markdown, per-cell summary)."""
    out = pathlib.Path(out)
    text, cells = report(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if raw is not None:
        write_json(raw, run)
    write_json(out.with_suffix(".json"), summarize(run))
    chart(run["results"], out.with_suffix(".png"))
    return text, cells


def header_of_report(text: str) -> dict:
    """Date, machine, commit and the run note of a report written before these were saved in its JSON: from its
    ``Date: …; machine: …; mode: …`` and ``Code: commit `…`, …`` lines."""
    import re

    date = re.search(r"^Date: (.*?); machine: (.*?); mode: ", text, re.M)
    code = re.search(r"^Code: commit (`\w+`)(.*?)\s*$", text, re.M)
    header = {"date": date.group(1), "machine": date.group(2)}
    if code:
        header["commit"] = code.group(1)
        run = re.search(r"\brun (\d{4}-\d\d-\d\d .*?)(?: — |\.?\s*$)", code.group(2))
        header["note"] = f"Run {run.group(1)}." if run else ""
    return header


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=pathlib.Path,
                        help="result files (summary or full) of quality.py; each rewrites the .md/.png/.json beside "
                             "itself (a full file is reduced to its summary)")
    args = parser.parse_args(argv)
    for path in args.json:
        run = json.loads(path.read_text())
        if "date" not in run:
            run.update(header_of_report(path.with_suffix(".md").read_text()))
        if "first_call_starts" not in run:
            run["first_call_starts"] = list(first_call_starts())
        write(run, path.with_suffix(".md"))
        print(f"wrote {path.with_suffix('.md')}, {path.with_suffix('.png')} and the summary {path}")


if __name__ == "__main__":
    main()
