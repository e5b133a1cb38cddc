"""The quality benchmark's dropdown-only summary and per-family recommendations, on a small synthetic run (no
ComfyUI: the report module reads result rows only)."""
from benchmarks import quality_report
from benchmarks.quality_setup import FITTED_REFINED


def row(problem, budget, family, sampler, scheduler, error):
    return {"problem": problem, "budget": budget, "family": family, "sampler": sampler, "scheduler": scheduler,
            "nfe": budget, "steps": budget, "rms_error": error, "median_error": error, "mode_flip": 0.0}


def synthetic_run():
    results = []
    for problem, scale in (("digits-flow", 1.0), ("analytic-narrow", 2.0), ("digits-diffusion", 4.0)):
        for budget in (4, 8):
            base = scale / budget
            results += [row(problem, budget, "built-in", "euler", "simple", 2 * base),
                        row(problem, budget, "built-in", "ipndm", "beta", base),
                        row(problem, budget, "FlowScope", "fs_abm", "beta", 0.7 * base),
                        row(problem, budget, "FlowScope", "fs_vp_abm", "beta", (0.5 if budget == 8 else 0.9) * base),
                        row(problem, budget, "FlowScope", "fs_abm3", "beta", 0.1 * base),  # an option variant
                        row(problem, budget, "FlowScope", "fs_fitted", FITTED_REFINED, 0.05 * base)]
    results.append(row("digits-diffusion", 8, "FlowScope", "fs_noise_abm", "karras", 0.3 * 4.0 / 8))
    return {"command": "python benchmarks/quality.py --dropdown", "mode": "dropdown", "date": "2026-12-04",
            "machine": "test", "commit": "`abc`", "references": {"digits-flow": {"nfe": 100, "accuracy": 1e-7}},
            "first_call_starts": [1.0], "sections": ["dropdown"], "results": results}


def test_dropdown_cells_use_only_dropdown_names_with_default_options():
    run = synthetic_run()
    text, cells = quality_report.report(run)
    assert cells[("digits-flow", 4)] == {"ratio": 0.7, "met": True}  # fs_abm, not the variant or the fitted solver
    assert abs(cells[("digits-flow", 8)]["ratio"] - 0.5) < 1e-12  # fs_vp_abm
    assert abs(cells[("digits-diffusion", 8)]["ratio"] - 0.3) < 1e-12  # fs_noise_abm
    assert "fs_abm3" not in text and "fs_fitted" not in text
    assert text.startswith("# Dropdown benchmark")


def test_recommendations_pick_the_lowest_geometric_mean_per_family_and_budget():
    chosen = {(r["family"], r["budget"]): r for r in quality_report.recommendations(synthetic_run()["results"])}
    assert set(chosen) == {("flow", 4), ("flow", 8), ("diffusion", 4), ("diffusion", 8)}
    assert (chosen[("flow", 4)]["sampler"], chosen[("flow", 8)]["sampler"]) == ("fs_abm", "fs_vp_abm")
    assert abs(chosen[("flow", 8)]["mean_ratio"] - 0.5) < 1e-12
    assert abs(chosen[("flow", 8)]["worst_ratio"] - 0.5) < 1e-12
    # fs_noise_abm ran on the diffusion problem only at 8 NFE: it is the one measured there
    assert chosen[("diffusion", 8)]["sampler"] == "fs_noise_abm"


def test_recommendations_name_the_problems_of_each_family_present():
    text, _ = quality_report.report(synthetic_run())
    assert ("best built-in (flow: digits-flow, analytic-narrow; diffusion: digits-diffusion), and its worst ratio"
            in text)
    run = synthetic_run()
    run["results"] = [r for r in run["results"] if r["problem"] == "analytic-narrow"]  # a one-problem run
    text, _ = quality_report.report(run)
    assert "best built-in (flow: analytic-narrow), and its worst ratio" in text


def test_the_summary_regenerates_the_same_page():
    run = synthetic_run()
    summary = quality_report.summarize(run)
    assert quality_report.report(summary) == quality_report.report(run)
    assert len(summary["results"]) < len(run["results"])
    assert summary["recommendations"] == quality_report.recommendations(run["results"])


def test_runs_saved_without_sections_keep_their_page():
    run = {**synthetic_run(), "mode": "standard"}
    with_section, _ = quality_report.report(run)
    without, _ = quality_report.report({key: value for key, value in run.items() if key != "sections"})
    assert "Dropdown only" in with_section and "Dropdown only" not in without


def test_readme_recommendations_come_from_the_published_dropdown_run():
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    published = json.loads((root / "docs" / "benchmark_dropdown.json").read_text())
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- recommendations:start -->\n")[1].split("\n<!-- recommendations:end -->")[0]
    assert block == quality_report.readme_recommendations(published), (
        "README.md's recommendation table differs from docs/benchmark_dropdown.json; paste the output of "
        "benchmarks.quality_report.readme_recommendations between the markers")
