"""Save Fitted Solver and Load Fitted Solver: a Fitted Solver's SAMPLER written to a small ``.safetensors`` file
(samplers/fitted/storage.py) and read back as SAMPLER + SIGMAS, so a fit is paid once per model and reused.

Files go to the ``flowscope_solvers`` model folder (``models/flowscope_solvers``, registered with ``folder_paths``;
``extra_model_paths.yaml`` may add more) or to ComfyUI's output folder. The provenance the Fitted Solver node
recorded (model class and fingerprint, sampling type, CFG, latent shape) travels in the file's metadata: Load
warns when the MODEL given to it is another one, and the SAMPLER refuses SIGMAS with another step count.
"""
from __future__ import annotations

import logging
import os

import comfy.samplers
import folder_paths
import torch

from ..samplers.fitted import FittedSolver
from ..samplers.fitted.storage import SolverFileError, load_solver, save_solver
from .comfy_io import io
from .model_identity import model_mismatch, model_provenance
from .sampler_nodes import fitted_solver_sampler

SOLVER_FOLDER = "flowscope_solvers"
CATEGORY = "FlowScope/samplers"


def register_solver_folder() -> str:
    """Add the ``flowscope_solvers`` model folder (``.safetensors`` files) unless the user configured it."""
    if SOLVER_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[SOLVER_FOLDER] = (
            [os.path.join(folder_paths.models_dir, SOLVER_FOLDER)], {".safetensors"})
    return folder_paths.get_folder_paths(SOLVER_FOLDER)[0]


def fitted_solver_of(sampler, who: str) -> FittedSolver:
    solver = getattr(sampler, "extra_options", {}).get("solver") if isinstance(sampler, comfy.samplers.KSAMPLER) \
        else None
    if not isinstance(solver, FittedSolver):
        raise ValueError(f"{who}, input 'sampler': not a fitted solver — connect the SAMPLER output of "
                         f"FlowScope · Fitted Solver or FlowScope · Load Fitted Solver")
    return solver


def describe(solver: FittedSolver) -> str:
    recorded = solver.provenance
    fitted = ", ".join(f"{key} {recorded[key]}" for key in ("model", "model_sampling", "cfg", "latent_shape")
                       if key in recorded)
    error = (f"; pilot error {recorded['pilot_error']} (base {recorded['pilot_base_error']})"
             if "pilot_error" in recorded and "pilot_base_error" in recorded else "")
    return (f"{len(solver.sigmas) - 1} steps from σ = {solver.sigmas[0]:.4g}, {solver.prediction} base of order "
            f"{solver.order}, history {solver.history}{error}; fitted for {fitted or 'an unrecorded model'}")


class SaveFittedSolver(io.ComfyNode):
    NAME = "FlowScope · Save Fitted Solver"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeSaveFittedSolver", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="Writes a Fitted Solver's SAMPLER to a small .safetensors file (coefficients, σ grid, "
                        "settings, and which model, CFG and latent shape it was fitted for). Load it with "
                        "FlowScope · Load Fitted Solver instead of fitting again.",
            inputs=[io.Sampler.Input("sampler", tooltip="The SAMPLER output of FlowScope · Fitted Solver."),
                    io.String.Input("filename_prefix", default="flowscope_solver"),
                    io.Combo.Input("folder", options=["flowscope_solvers", "output"], default="flowscope_solvers",
                                   tooltip="flowscope_solvers: models/flowscope_solvers, listed by Load Fitted "
                                           "Solver; output: ComfyUI's output folder.")],
            outputs=[io.String.Output(display_name="path")])

    @classmethod
    def execute(cls, sampler, filename_prefix, folder) -> io.NodeOutput:
        solver = fitted_solver_of(sampler, cls.NAME)
        root = register_solver_folder() if folder == SOLVER_FOLDER else folder_paths.get_output_directory()
        os.makedirs(root, exist_ok=True)
        try:
            directory, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        except Exception as error:
            raise ValueError(f"{cls.NAME}, input 'filename_prefix': {error}") from error
        path = os.path.join(directory, f"{name}_{counter:05}_.safetensors")
        save_solver(solver, path)
        listed = os.path.join(subfolder, os.path.basename(path))
        logging.info("%s: wrote %s (%s)", cls.NAME, path, describe(solver))
        return io.NodeOutput(path, ui={"text": [listed]})


class LoadFittedSolver(io.ComfyNode):
    NAME = "FlowScope · Load Fitted Solver"

    @classmethod
    def define_schema(cls):
        register_solver_folder()
        return io.Schema(
            node_id="FlowScopeLoadFittedSolver", display_name=cls.NAME, category=CATEGORY,
            description="Reads a solver written by Save Fitted Solver (models/flowscope_solvers) and gives its "
                        "SAMPLER and the SIGMAS it was fitted on. Sampling other SIGMAS is an error; a MODEL other "
                        "than the one it was fitted for is a warning in the report and the log.",
            inputs=[io.Combo.Input("solver_file", options=folder_paths.get_filename_list(SOLVER_FOLDER),
                                   tooltip="Files in models/flowscope_solvers."),
                    io.Model.Input("model", optional=True,
                                   tooltip="The model you will sample: checked against the one the solver was "
                                           "fitted for.")],
            outputs=[io.Sampler.Output(), io.Sigmas.Output(display_name="sigmas"),
                     io.String.Output(display_name="report")])

    @classmethod
    def execute(cls, solver_file, model=None) -> io.NodeOutput:
        path = folder_paths.get_full_path(SOLVER_FOLDER, solver_file) if solver_file else None
        if path is None:
            raise ValueError(f"{cls.NAME}, input 'solver_file': {solver_file!r} is not in "
                             f"{', '.join(folder_paths.get_folder_paths(SOLVER_FOLDER))}")
        try:
            solver = load_solver(path)
        except SolverFileError as error:
            raise ValueError(f"{cls.NAME}, input 'solver_file': {error}") from error
        report = describe(solver)
        mismatch = model_mismatch(solver.provenance, model_provenance(model)) if model is not None else ""
        if mismatch:
            report = f"WARNING: {mismatch}. " + report
            logging.warning("%s: %s: %s", cls.NAME, solver_file, mismatch)
        sigmas = torch.tensor(solver.sigmas, dtype=torch.float32)
        summary = {"steps": len(solver.sigmas) - 1, "model_checked": model is not None,
                   "other_model": bool(mismatch), "provenance": solver.provenance}
        return io.NodeOutput(fitted_solver_sampler(solver), sigmas, report,
                             ui={"text": [report], "flowscope_solver": [summary]})


NODES = [SaveFittedSolver, LoadFittedSolver]
