"""Fitted-solver files: a :class:`FittedSolver` written to and read from a small ``.safetensors`` file.

A fit costs hundreds to thousands of model calls, so it is saved once and reused. The file holds four float64/int64
tensors — the σ grid, the coefficients of all steps concatenated, the number of coefficients per step and the first
model call's ``(a, t)`` — and string metadata: the format name and version, the solver's settings and its
provenance (which model, guidance and latent shape it was fitted for, and its pilot errors).

Reading never executes anything from the file: safetensors holds raw tensors and a JSON header only, the file size
is checked before it is opened, and every tensor and metadata field is checked against the schema below (names,
dtypes, shapes, finite values, a decreasing grid, counts that add up) before a solver is built. A file that fails a
check raises :class:`SolverFileError` saying which field is wrong.
"""
from __future__ import annotations

import json
import os
import torch

from ..predictor_corrector import PREDICTIONS
from .solver import FittedSolver

FORMAT = "flowscope.fitted_solver"
VERSION = 1
MAX_FILE_BYTES = 1 << 20  # a 1000-step solver with 64 coefficients a step is about 0.5 MB
MAX_STEPS = 1000
MAX_COEFFICIENTS_PER_STEP = 64
MAX_METADATA_CHARS = 4096
TENSOR_DTYPES = {"sigmas": torch.float64, "coefficients": torch.float64, "coefficient_counts": torch.int64,
                 "first_call": torch.float64}
SETTINGS = ("prediction", "order", "history", "denoise_end", "guidance_history")


class SolverFileError(ValueError):
    """A fitted-solver file that cannot be used; the message names the file and the failing field."""


def solver_metadata(solver: FittedSolver) -> dict[str, str]:
    """The safetensors metadata (all strings) of ``solver``: format, version, settings, provenance."""
    settings = {name: getattr(solver, name) for name in SETTINGS}
    metadata = {"format": FORMAT, "version": str(VERSION), "settings": json.dumps(settings),
                "provenance": json.dumps({k: str(v) for k, v in solver.provenance.items()})}
    for key, value in metadata.items():
        if len(value) > MAX_METADATA_CHARS:
            raise SolverFileError(f"metadata {key!r} is {len(value)} characters; at most {MAX_METADATA_CHARS}")
    return metadata


def solver_tensors(solver: FittedSolver) -> dict[str, torch.Tensor]:
    counts = [len(c) for c in solver.coefficients]
    return {"sigmas": torch.tensor([float(s) for s in solver.sigmas], dtype=torch.float64),
            "coefficients": torch.tensor([float(v) for c in solver.coefficients for v in c], dtype=torch.float64),
            "coefficient_counts": torch.tensor(counts, dtype=torch.int64),
            "first_call": torch.tensor([float(v) for v in solver.first_call], dtype=torch.float64)}


def save_solver(solver: FittedSolver, path: str) -> None:
    """Write ``solver`` (with its provenance) to ``path`` as ``.safetensors``; checks it against the schema first,
    so every file written can be read back."""
    from safetensors.torch import save_file

    tensors = solver_tensors(solver)
    metadata = solver_metadata(solver)
    solver_from_parts(tensors, metadata, where=path)
    save_file(tensors, path, metadata=metadata)


def load_solver(path: str) -> FittedSolver:
    """Read and check a fitted-solver file (see the module docstring); raises :class:`SolverFileError`."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise SolverFileError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise SolverFileError(f"{path}: {size} bytes; a fitted-solver file is at most {MAX_FILE_BYTES} bytes")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            _check_names(names, path)
            tensors = {name: handle.get_tensor(name) for name in names}
    except SolverFileError:
        raise
    except Exception as error:  # safetensors raises its own error type for truncated or malformed files
        raise SolverFileError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error
    return solver_from_parts(tensors, metadata, where=path)


def _check_names(names: set, where: str) -> None:
    if names != set(TENSOR_DTYPES):
        raise SolverFileError(f"{where}: tensors {sorted(names)}; a fitted-solver file holds exactly "
                              f"{sorted(TENSOR_DTYPES)}")


def _json_field(metadata: dict, key: str, where: str) -> dict:
    text = metadata.get(key)
    if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
        raise SolverFileError(f"{where}: metadata {key!r} missing or longer than {MAX_METADATA_CHARS} characters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SolverFileError(f"{where}: metadata {key!r} is not JSON ({error})") from error
    if not isinstance(value, dict):
        raise SolverFileError(f"{where}: metadata {key!r} must be a JSON object")
    return value


def _provenance(metadata: dict, where: str) -> dict:
    provenance = _json_field(metadata, "provenance", where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in provenance.items()):
        raise SolverFileError(f"{where}: metadata 'provenance' must map names to strings")
    return provenance


def _settings(metadata: dict, where: str) -> dict:
    settings = _json_field(metadata, "settings", where)
    if set(settings) != set(SETTINGS):
        raise SolverFileError(f"{where}: settings {sorted(settings)}; expected {sorted(SETTINGS)}")
    if settings["prediction"] not in PREDICTIONS:
        raise SolverFileError(f"{where}: prediction {settings['prediction']!r} is not one of {PREDICTIONS}")
    for name, low, high in (("order", 1, 4), ("history", 0, MAX_COEFFICIENTS_PER_STEP),
                            ("guidance_history", 0, MAX_COEFFICIENTS_PER_STEP)):
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SolverFileError(f"{where}: {name} = {value!r}; expected an integer in [{low}, {high}]")
    if not isinstance(settings["denoise_end"], bool):
        raise SolverFileError(f"{where}: denoise_end = {settings['denoise_end']!r}; expected true or false")
    return settings


def _vector(tensors: dict, name: str, where: str) -> torch.Tensor:
    tensor = tensors[name]
    if tensor.dtype != TENSOR_DTYPES[name] or tensor.dim() != 1:
        raise SolverFileError(f"{where}: tensor {name!r} is {tensor.dtype} of shape {tuple(tensor.shape)}; "
                              f"expected a 1-D {TENSOR_DTYPES[name]} tensor")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise SolverFileError(f"{where}: tensor {name!r} holds non-finite values")
    return tensor


def solver_from_parts(tensors: dict, metadata: dict, where: str = "fitted solver") -> FittedSolver:
    """Build a :class:`FittedSolver` from a file's tensors and metadata after checking both against the schema."""
    _check_names(set(tensors), where)
    if metadata.get("format") != FORMAT:
        raise SolverFileError(f"{where}: metadata format {metadata.get('format')!r}; expected {FORMAT!r} (not a "
                              f"FlowScope fitted-solver file)")
    if metadata.get("version") != str(VERSION):
        raise SolverFileError(f"{where}: format version {metadata.get('version')!r}; this FlowScope reads "
                              f"version {VERSION}")
    settings, provenance = _settings(metadata, where), _provenance(metadata, where)
    sigmas, counts = _vector(tensors, "sigmas", where), _vector(tensors, "coefficient_counts", where)
    values, first_call = _vector(tensors, "coefficients", where), _vector(tensors, "first_call", where)
    steps = sigmas.numel() - 1
    if not 1 <= steps <= MAX_STEPS:
        raise SolverFileError(f"{where}: {steps} steps; expected 1 to {MAX_STEPS}")
    if (sigmas < 0).any() or not (sigmas[1:] < sigmas[:-1]).all():
        raise SolverFileError(f"{where}: sigmas must be non-negative and strictly decreasing")
    if counts.numel() != steps or (counts < 0).any() or (counts > MAX_COEFFICIENTS_PER_STEP).any():
        raise SolverFileError(f"{where}: coefficient_counts must give 0 to {MAX_COEFFICIENTS_PER_STEP} "
                              f"coefficients for each of the {steps} steps")
    if int(counts.sum()) != values.numel():
        raise SolverFileError(f"{where}: coefficient_counts add up to {int(counts.sum())} but the file holds "
                              f"{values.numel()} coefficients")
    if first_call.numel() != 2 or not (first_call > 0).all():
        raise SolverFileError(f"{where}: first_call must be two positive numbers (a, t)")
    coefficients, start = [], 0
    for count in counts.tolist():
        coefficients.append(values[start:start + count].tolist())
        start += count
    return FittedSolver(sigmas=tuple(sigmas.tolist()), coefficients=coefficients,
                        first_call=tuple(first_call.tolist()), provenance=provenance, **settings)
