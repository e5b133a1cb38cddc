"""The pilot-size page of the quality benchmark, written from a small synthetic run (no ComfyUI): ratios to the
best built-in, the fallback column, and the cells that miss the 2× target named plainly."""
import json

from benchmarks.quality_pilot_sizes import TARGET_PILOT, builtin_best, load_builtin_summary, report, write


def builtin_summary():
    return {"mode": "dropdown", "date": "2026-12-04 12:00 UTC", "commit": "abc1234", "results": [
        {"problem": "analytic", "family": "built-in", "sampler": "lms", "scheduler": "beta", "budget": 8,
         "rms_error": 0.02},
        {"problem": "analytic", "family": "built-in", "sampler": "euler", "scheduler": "beta", "budget": 8,
         "rms_error": 0.2},
        {"problem": "analytic", "family": "FlowScope", "sampler": "fs_ab3", "scheduler": "beta", "budget": 8,
         "rms_error": 0.001},
        {"problem": "analytic", "family": "built-in", "sampler": "deis", "scheduler": "beta", "budget": 16,
         "rms_error": 0.004},
        {"problem": "analytic", "family": "built-in", "sampler": "heun", "scheduler": "beta", "budget": None,
         "failed": "x"}]}


def row(budget, pilot, error, fallback=False, rule_off=None, search=None, search_fallback=False):
    return {"problem": "analytic", "budget": budget, "pilot": pilot, "scheduler": "beta", "nfe": budget,
            "rms_error": error, "median_error": error, "mode_flip": 0.0, "fallback": fallback,
            "pilot_error": error / 2, "pilot_base_error": error, "held_out_error": None,
            "held_out_base_error": None, "history": 8, "order": 3, "min_ridge": 1e-2 if pilot < 8 else 0.0,
            "rule_off_error": rule_off, "rule_off_fallback": None if rule_off is None else False,
            "search_error": search, "search_fallback": None if search is None else search_fallback}


def synthetic_run(tmp_path):
    path = tmp_path / "dropdown.json"
    path.write_text(json.dumps(builtin_summary()))
    return {"command": "python benchmarks/quality.py --pilot-sizes", "mode": "pilot-sizes",
            "date": "2026-12-04 13:00 UTC", "commit": "def5678", "machine": "x86_64, 1 threads",
            "references": {"analytic": {"nfe": 300, "accuracy": 1e-8}}, "builtin": load_builtin_summary(path),
            "results": [row(8, 1, 0.05, rule_off=0.5, search=0.03),
                        row(8, TARGET_PILOT, 0.008, search=0.012),
                        row(16, 1, 0.004, fallback=True, search=0.004, search_fallback=True),
                        row(16, TARGET_PILOT, 0.003, search=0.0016)]}


def test_builtin_best_takes_the_lowest_built_in_row_per_cell():
    best = builtin_best(builtin_summary())
    assert set(best) == {("analytic", 8), ("analytic", 16)}
    assert best[("analytic", 8)]["sampler"] == "lms"  # not the FlowScope row, not the worse euler


def test_report_gives_ratios_fallbacks_and_names_the_missed_cells(tmp_path):
    run = synthetic_run(tmp_path)
    text, cells = report(run)
    # the target is judged on the fast fit (what every preset runs on a small pilot), not on the search column
    assert cells[("analytic", 8, TARGET_PILOT)] == {"ratio": 0.008 / 0.02, "search_ratio": 0.012 / 0.02,
                                                    "met": True}
    assert cells[("analytic", 16, TARGET_PILOT)]["met"] is False
    assert abs(cells[("analytic", 16, TARGET_PILOT)]["ratio"] - 0.75) < 1e-12
    assert abs(cells[("analytic", 16, TARGET_PILOT)]["search_ratio"] - 0.4) < 1e-12
    assert abs(cells[("analytic", 8, 1)]["ratio"] - 2.5) < 1e-12
    assert "| analytic | 8 | lms / beta | 2.00e-02 | 4 | 8.00e-03 | 0.40 | no | 1.20e-02 (0.60) | yes | — |" in text
    assert ("| analytic | 8 | lms / beta | 2.00e-02 | 1 | 5.00e-02 | 2.50 | no | 3.00e-02 (1.50) | — | "
            "5.00e-01 (25.00) |" in text)
    assert ("| analytic | 16 | deis / beta | 4.00e-03 | 1 | 4.00e-03 | 1.00 | yes | 4.00e-03 (1.00), base kept | — | "
            "— |" in text)
    assert "target (ratio ≤ 0.5) met in 1 of 2 cells" in text
    assert "Not met: analytic @ 16 NFE (0.75)" in text
    assert "dropdown.json (dropdown run, 2026-12-04 12:00 UTC, commit abc1234)" in text
    assert ("Pilot of 1, fast: geometric-mean ratio 1.58 over 2 cells, 1 at or below the best built-in; base kept "
            "in 1 of 2 fits." in text)
    assert ("Pilot of 1, with the schedule search: geometric-mean ratio 1.22 over 2 cells, 1 at or below the best "
            "built-in." in text)
    assert ("Small-pilot rule: lower error than without it in 1 of 1 fits, higher in 0; geometric-mean error "
            "ratio (with / without) 0.10; worst 0.10, best 0.10." in text)
    out = tmp_path / "page.md"
    written, _ = write(run, out)
    assert out.read_text() == written and json.loads(out.with_suffix(".json").read_text()) == run


def test_a_run_without_the_schedule_search_column_still_reads(tmp_path):
    run = synthetic_run(tmp_path)
    for result in run["results"]:  # a run written before the schedule search was measured
        del result["search_error"], result["search_fallback"]
    text, cells = report(run)
    assert cells[("analytic", 8, TARGET_PILOT)] == {"ratio": 0.008 / 0.02, "search_ratio": None, "met": True}
    assert "| analytic | 8 | lms / beta | 2.00e-02 | 4 | 8.00e-03 | 0.40 | no | — | yes | — |" in text
    assert "with the schedule search: geometric-mean" not in text


def test_report_without_built_in_summary_says_so(tmp_path):
    run = {**synthetic_run(tmp_path), "builtin": load_builtin_summary(tmp_path / "missing.json")}
    text, cells = report(run)
    assert "no built-in summary (ratios not available)" in text
    assert all(cell == {"ratio": None, "search_ratio": None, "met": None} for cell in cells.values())
    assert "| analytic | 8 | — | — | 4 | 8.00e-03 | — | no | 1.20e-02 (—) | n/a | — |" in text
