"""Fitted-solver files: a saved solver samples exactly as the original; truncated, mismatched, oversized and
hostile files give a SolverFileError naming the problem and never run code."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from samplers.fitted import FittedSolver, sample_fitted
from samplers.fitted.storage import (MAX_FILE_BYTES, SolverFileError, load_solver, save_solver, solver_metadata,
                                  solver_tensors)
from tests.unit.analytic_problems import uniform


def a_solver(steps=6, guidance_history=0) -> FittedSolver:
    generator = torch.Generator().manual_seed(3)
    coefficients = [(0.05 * torch.randn(2 + min(i, 3), generator=generator, dtype=torch.float64)).tolist()
                    for i in range(steps)]
    return FittedSolver(tuple(uniform(steps).tolist()), "data", order=3, history=4, denoise_end=False,
                        coefficients=coefficients,
                        guidance_history=guidance_history, first_call=(0.95, 0.9),
                        provenance={"model": "Flux", "model_fingerprint": "0123abcd", "cfg": "3.5",
                                    "pilot_error": "1.500e-03"})


def test_round_trip_keeps_every_field_and_samples_bit_identically(problem, tmp_path):
    solver = a_solver()
    path = str(tmp_path / "solver.safetensors")
    save_solver(solver, path)
    loaded = load_solver(path)
    assert loaded == solver
    grid = torch.tensor(solver.sigmas, dtype=torch.float64)
    original = sample_fitted(problem.model, problem.noise * grid[0], grid, disable=True, solver=solver)
    again = sample_fitted(problem.model, problem.noise * grid[0], grid, disable=True, solver=loaded)
    assert torch.equal(original, again)
    assert os.path.getsize(path) < 4096


def test_sampling_another_step_count_is_a_clear_error(problem, tmp_path):
    path = str(tmp_path / "solver.safetensors")
    save_solver(a_solver(steps=6), path)
    with pytest.raises(ValueError, match="fitted for the 6-step grid"):
        sample_fitted(problem.model, problem.noise, uniform(8), disable=True, solver=load_solver(path))


def _write(path, tensors=None, metadata=None):
    solver = a_solver()
    tensors = {**solver_tensors(solver), **(tensors or {})}
    save_file({k: v for k, v in tensors.items() if v is not None}, path,
              metadata={**solver_metadata(solver), **(metadata or {})})
    return path


@pytest.mark.parametrize("change, message", [
    (dict(tensors={"coefficient_counts": torch.tensor([2, 3, 4, 5, 5, 6])}), "add up to"),
    (dict(tensors={"coefficient_counts": torch.tensor([2, 3, 4, 5, 5])}), "each of the 6 steps"),
    (dict(tensors={"sigmas": torch.linspace(0.0, 1.0, 7, dtype=torch.float64)}), "strictly decreasing"),
    (dict(tensors={"sigmas": uniform(6).float()}), "expected a 1-D torch.float64"),
    (dict(tensors={"coefficients": torch.full((24,), float("nan"), dtype=torch.float64)}), "non-finite"),
    (dict(tensors={"first_call": torch.tensor([1.0, -1.0], dtype=torch.float64)}), "first_call"),
    (dict(tensors={"payload": torch.zeros(3)}), "holds exactly"),
    (dict(tensors={"first_call": None}), "holds exactly"),
    (dict(metadata={"format": "something.else"}), "not a FlowScope fitted-solver file"),
    (dict(metadata={"version": "2"}), "format version '2'"),
    (dict(metadata={"settings": "{not json"}), "'settings' is not JSON"),
    (dict(metadata={"settings": json.dumps({"prediction": "data", "order": 9, "history": 4, "denoise_end": True,
                                            "guidance_history": 0})}), "order = 9"),
    (dict(metadata={"settings": json.dumps({"prediction": "__import__('os')", "order": 2, "history": 4,
                                            "denoise_end": True, "guidance_history": 0})}), "prediction"),
    (dict(metadata={"provenance": json.dumps({"model": ["Flux"]})}), "'provenance' must map names to strings"),
], ids=["counts-sum", "counts-length", "increasing-sigmas", "float32-sigmas", "nan-coefficients",
        "negative-first-call", "extra-tensor", "missing-tensor", "other-format", "newer-version", "bad-json",
        "order-out-of-range", "prediction-not-a-name", "provenance-not-strings"])
def test_mismatched_files_name_the_failing_field(tmp_path, change, message):
    path = _write(str(tmp_path / "bad.safetensors"), **change)
    with pytest.raises(SolverFileError, match=message):
        load_solver(path)


def test_truncated_file_is_not_readable(tmp_path):
    path = str(tmp_path / "solver.safetensors")
    save_solver(a_solver(), path)
    data = open(path, "rb").read()
    for cut in (4, 40, len(data) - 8):
        with open(path, "wb") as handle:
            handle.write(data[:cut])
        with pytest.raises(SolverFileError, match="not a readable safetensors file"):
            load_solver(path)


def test_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = str(tmp_path / "huge.safetensors")
    with open(path, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(SolverFileError, match=f"at most {MAX_FILE_BYTES} bytes"):
        load_solver(path)


def test_a_header_claiming_huge_tensors_is_not_allocated(tmp_path):
    header = json.dumps({"sigmas": {"dtype": "F64", "shape": [1 << 40], "data_offsets": [0, 8 << 40]}}).encode()
    path = str(tmp_path / "lying.safetensors")
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    with pytest.raises(SolverFileError, match="not a readable safetensors file"):
        load_solver(path)


class _Hostile:
    def __reduce__(self):
        return (open, (os.environ["FLOWSCOPE_TEST_MARKER"], "w"))


def test_a_pickle_renamed_safetensors_runs_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    monkeypatch.setenv("FLOWSCOPE_TEST_MARKER", str(marker))
    path = str(tmp_path / "hostile.safetensors")
    with open(path, "wb") as handle:
        pickle.dump({"sigmas": _Hostile()}, handle)
    with pytest.raises(SolverFileError, match="not a readable safetensors file"):
        load_solver(path)
    assert not marker.exists()


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SolverFileError, match="no such file"):
        load_solver(str(tmp_path / "absent.safetensors"))
