"""Diagnostic nodes: record a sampling trajectory, then plot velocity norms, measure straightness and step
error, and export the statistics. The numerics live in diagnostics/ (recorder.py, trajectory.py, export.py), the
charts in diagnostics/charts.py; these nodes only connect them to ComfyUI."""
from __future__ import annotations

import csv
import json
import os

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import folder_paths
import latent_preview
import torch

from ..diagnostics import charts
from ..diagnostics.error_vs_nfe import error_vs_nfe
from ..diagnostics.export import trajectory_json, trajectory_rows
from ..diagnostics.recorder import TrajectoryRecorder
from ..diagnostics.trajectory import Trajectory, latent_parts, straightness
from ..samplers.reference import reference_options
from .comfy_io import TrajectoryType, io
from .comfy_sampling import comfy_sampler_function, model_family, sample_like_custom_advanced

CATEGORY = "FlowScope/diagnostics"
RECORDER_KEY = "flowscope_trajectory_recorder"
T_LABEL = "t (flow time: 1 = noise, 0 = data)"


def sampler_label(sampler) -> str:
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", type(sampler).__name__)
    return name.removeprefix("sample_")


def packed_latent(latent):
    """A multi-part latent (``comfy.nested_tensor.NestedTensor``) as the one flat ``[B, 1, N]`` tensor the sampler
    works on (``comfy.utils.pack_latents``); any other tensor as it is."""
    if getattr(latent, "is_nested", False):
        return comfy.utils.pack_latents(latent.unbind())[0]
    return latent


def record_sampling(guider, sampler, sigmas, latent_image: dict, noise, label: str = "",
                    record_latents: bool = False, max_latents: int = 64, preview: bool = True):
    """Run ``guider.sample`` exactly as SamplerCustomAdvanced does, with a recorder attached through
    ComfyUI's wrapper mechanism (predict-noise: every model call; sampler-sample: the sampler's own output).
    Returns (samples, denoised_or_None, Trajectory).

    A multi-part latent (``samples`` a ``comfy.nested_tensor.NestedTensor``, e.g. LTXAV video + audio) reaches the
    sampler packed into one flat [B, 1, N] tensor (``comfy.utils.pack_latents``): the recorder then also keeps every
    statistic per part (:func:`latent_parts`), and the outputs come back as SamplerCustomAdvanced returns them —
    ``samples`` nested, ``denoised`` in the parts' shapes. Newer ComfyUI hands the step callback the parts
    (NestedTensors) instead of the packed tensor; the recorder gets them packed again (:func:`packed_latent`)."""
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    flow = model_family(model_sampling).flow
    recorder = TrajectoryRecorder(flow, sigmas, label=label or sampler_label(sampler),
                                  record_latents=record_latents, max_latents=max_latents,
                                  parts=latent_parts(latent_image["samples"]))
    sampler_output = {}
    x0_output = {}
    preview_callback = (latent_preview.prepare_callback(guider.model_patcher, sigmas.shape[-1] - 1, x0_output)
                        if preview else None)

    def callback(step, denoised, x, total_steps):
        recorder.on_step(step, packed_latent(x), packed_latent(denoised))
        if preview_callback is not None:
            preview_callback(step, denoised, x, total_steps)

    def record_model_call(executor, x, timestep, model_options, seed):
        denoised = executor(x, timestep, model_options, seed)
        recorder.on_model_call(x, timestep, denoised)
        return denoised

    def capture_sampler_output(executor, *args, **kwargs):
        sampler_output["x"] = executor(*args, **kwargs)
        return sampler_output["x"]

    original_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    wrappers = comfy.patcher_extension.WrappersMP
    comfy.patcher_extension.add_wrapper_with_key(wrappers.PREDICT_NOISE, RECORDER_KEY, record_model_call,
                                                 guider.model_options, is_model_options=True)
    comfy.patcher_extension.add_wrapper_with_key(wrappers.SAMPLER_SAMPLE, RECORDER_KEY, capture_sampler_output,
                                                 guider.model_options, is_model_options=True)
    try:
        samples = sample_like_custom_advanced(guider, sampler, sigmas, latent_image, noise, callback,
                                              disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
    finally:
        guider.model_options = original_options
    trajectory = recorder.finish(sampler_output.get("x", samples))
    trajectory.extra["sigmas"] = [float(s) for s in sigmas.tolist()]
    samples = samples.to(comfy.model_management.intermediate_device())  # NestedTensor.to maps over the parts
    denoised = None
    if "x0" in x0_output:  # the sampler's flat (packed) tensor, or already its parts on newer ComfyUI
        denoised = guider.model_patcher.model.process_latent_out(x0_output["x0"].cpu())
        if getattr(samples, "is_nested", False) and not getattr(denoised, "is_nested", False):
            import comfy.nested_tensor as nested_tensor  # "as": a bare import would make comfy a local name

            shapes = [part.shape for part in samples.unbind()]
            denoised = nested_tensor.NestedTensor(comfy.utils.unpack_latents(denoised, shapes))
    return samples, denoised, trajectory


class RecordSampling(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeRecordSampling", display_name="FlowScope · Sample & Record Trajectory",
            category=CATEGORY,
            description="Samples exactly like SamplerCustomAdvanced (any sampler: built-in, FlowScope or "
                        "third-party; the output is bit-identical) and records the trajectory at model-call "
                        "granularity. By default only per-call scalars are kept (a few KB per step).",
            inputs=[io.Noise.Input("noise"), io.Guider.Input("guider"), io.Sampler.Input("sampler"),
                    io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image"),
                    io.String.Input("label", default="", tooltip="Name in charts; empty = the sampler's name."),
                    io.Boolean.Input("record_latents", default=False,
                                     tooltip="Also keep the latent at every step (memory: steps × latent)."),
                    io.Int.Input("max_latents", default=64, min=1, max=10000,
                                 tooltip="Cap on stored latents when record_latents is on.")],
            outputs=[io.Latent.Output(display_name="output"), io.Latent.Output(display_name="denoised_output"),
                     TrajectoryType.Output(display_name="trajectory")])

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image, label, record_latents,
                max_latents) -> io.NodeOutput:
        samples, denoised, trajectory = record_sampling(guider, sampler, sigmas, latent_image, noise, label,
                                                        record_latents, max_latents)
        out = latent_image.copy()
        out["samples"] = samples
        out_denoised = out
        if denoised is not None:
            out_denoised = latent_image.copy()
            out_denoised["samples"] = denoised
        return io.NodeOutput(out, out_denoised, trajectory)


def _trajectories(who: str, *candidates) -> list[Trajectory]:
    found = [t for t in candidates if t is not None]
    for index, trajectory in enumerate(found):
        if not isinstance(trajectory, Trajectory):
            raise ValueError(f"{who}, input {index + 1}: expected a FlowScope trajectory, got "
                             f"{type(trajectory).__name__}")
        trajectory.validate(who)
    return found


def _status_notes(trajectories) -> list[str]:
    return [note for trajectory in trajectories for note in trajectory.warnings()]


def _parameterization(trajectories) -> str:
    kinds = sorted({t.parameterization for t in trajectories})
    if kinds == ["flow"]:
        return "parameterization: flow time t = σ (flow model)"
    return ("parameterization: common flow time; diffusion (VE) runs converted with t = σ/(1+σ), "
            "x_flow = x/(1+σ)" + (" — flow and diffusion overlaid" if len(kinds) > 1 else ""))


def _part_label(trajectory: Trajectory, part: Trajectory) -> str:
    return f"{trajectory.label} · {part.part}"


def _ui(payload) -> dict:
    return {"flowscope_chart": [payload]}


TRAJECTORY_INPUTS = [TrajectoryType.Input("trajectory"),
                     TrajectoryType.Input("trajectory_2", optional=True),
                     TrajectoryType.Input("trajectory_3", optional=True),
                     TrajectoryType.Input("trajectory_4", optional=True)]


class VelocityNormPlot(io.ComfyNode):
    NAME = "FlowScope · Velocity Norm Plot"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeVelocityNormPlot", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="‖v‖/√d of every model call against flow time t (batch mean, optionally per sample), for "
                        "up to four trajectories overlaid. Flow and diffusion runs share one axis. A multi-part "
                        "latent (e.g. video + audio) adds one batch-mean series per part (‖v_part‖/√d_part) "
                        "unless per-sample series are drawn.",
            inputs=[*TRAJECTORY_INPUTS,
                    io.Boolean.Input("per_sample", default=False, tooltip="Also draw each sample of the batch."),
                    io.Boolean.Input("log_y", default=False, tooltip="Initial y scale (the in-node chart can toggle).")],
            outputs=[io.Image.Output(display_name="chart")])

    @classmethod
    def execute(cls, trajectory, per_sample, log_y, trajectory_2=None, trajectory_3=None,
                trajectory_4=None) -> io.NodeOutput:
        found = _trajectories(cls.NAME, trajectory, trajectory_2, trajectory_3, trajectory_4)
        series_list = []
        for item in found:
            order = torch.argsort(item.call_t.mean(1), descending=True)
            t = item.call_t.mean(1)[order]
            series_list.append(charts.series(f"{item.label} (mean)", t, item.call_velocity_rms.mean(1)[order]))
            if per_sample and item.batch > 1:
                for b in range(item.batch):
                    series_list.append(charts.series(f"{item.label} #{b}", item.call_t[order, b],
                                                     item.call_velocity_rms[order, b], style="points"))
            else:  # per-sample series or per-part series, not both: the chart stays readable
                for part in item.parts:
                    series_list.append(charts.series(f"{_part_label(item, part)} (mean)", t,
                                                     part.call_velocity_rms.mean(1)[order]))
        notes = [f"{t.label}: {t.nfe} model calls, {t.steps} steps, batch {t.batch}, d = {t.dim}"
                 + "".join(f"; {part.part}: d = {part.dim}" for part in t.parts) for t in found]
        payload = charts.chart("Velocity norm along the trajectory", T_LABEL, "‖v‖ / √d", series_list,
                               y_log=log_y, x_reversed=True, parameterization=_parameterization(found),
                               notes=notes + _status_notes(found))
        return io.NodeOutput(charts.render(payload, node=cls.NAME), ui=_ui(payload))


STRAIGHTNESS_KEY = "flowscope_straightness"  # the Straightness Meter's ui entry: one dict of numbers per input
SCALAR_STATISTICS = ("straightness", "relative_straightness", "path_over_chord", "turning_angle", "kinetic_energy",
                     "transport_efficiency", "chord_sq", "span")


def _scalars(stats: dict) -> dict:
    """The scalar path statistics of :func:`straightness`, non-finite values as None (the ui is sent as JSON)."""
    return {key: charts.finite_or_none(stats[key]) for key in SCALAR_STATISTICS}


class StraightnessMeter(io.ComfyNode):
    NAME = "FlowScope · Straightness Meter"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeStraightnessMeter", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="Rectified-flow straightness S = Σ Δt‖v_i − c/T‖², relative S/(‖c‖²/T), path length over "
                        "chord L/C, total turning angle, kinetic energy and transport efficiency (‖c‖²/T)/KE of the "
                        "first trajectory; the chart shows each step's contribution to S for all inputs. A "
                        "multi-part latent (e.g. video + audio) adds the same statistics per part (each over its "
                        "own dimensions) to the summary and one contribution series per part; the number outputs "
                        "are the whole latent's.",
            inputs=[TrajectoryType.Input("trajectory"), TrajectoryType.Input("trajectory_2", optional=True)],
            outputs=[io.Image.Output(display_name="chart"), io.Float.Output(display_name="straightness"),
                     io.Float.Output(display_name="relative_straightness"),
                     io.Float.Output(display_name="path_over_chord"), io.Float.Output(display_name="turning_angle"),
                     io.Float.Output(display_name="kinetic_energy"),
                     io.Float.Output(display_name="transport_efficiency"), io.String.Output(display_name="summary")])

    @classmethod
    def execute(cls, trajectory, trajectory_2=None) -> io.NodeOutput:
        found = _trajectories(cls.NAME, trajectory, trajectory_2)
        stats = [straightness(t) for t in found]
        def line(name, s):
            return (f"{name}: S = {s['straightness']:.4g}, S/(|c|²/T) = {s['relative_straightness']:.4g}, "
                    f"L/C = {s['path_over_chord']:.4f}, turning = {s['turning_angle']:.3f} rad, "
                    f"KE = {s['kinetic_energy']:.4g}, efficiency = {s['transport_efficiency']:.4f}")

        lines, series_list = [], []
        for t, s in zip(found, stats):
            lines.append(line(t.label, s))
            series_list.append(charts.series(f"{t.label}: step contribution to S", t.t[:-1],
                                             s["per_step_contribution"], style="line"))
            for part, part_stats in zip(t.parts, s["parts"]):
                lines.append(line(_part_label(t, part), part_stats))
                series_list.append(charts.series(f"{_part_label(t, part)}: step contribution to S", t.t[:-1],
                                                 part_stats["per_step_contribution"], style="line"))
        payload = charts.chart("Straightness: contribution of each step", T_LABEL, "Δt·(‖v_i‖² − ‖c‖²/T²)/d",
                               series_list, x_reversed=True, parameterization=_parameterization(found),
                               notes=lines + _status_notes(found))
        first = stats[0]
        values = [{"label": t.label, **_scalars(s), "parts": [{"name": part["name"], "dim": part["dim"],
                                                             **_scalars(part)} for part in s["parts"]]}
                  for t, s in zip(found, stats)]
        return io.NodeOutput(charts.render(payload, node=cls.NAME), first["straightness"], first["relative_straightness"],
                             first["path_over_chord"], first["turning_angle"], first["kinetic_energy"],
                             first["transport_efficiency"], "\n".join(lines),
                             ui={**_ui(payload), STRAIGHTNESS_KEY: values})


class StepErrorMeter(io.ComfyNode):
    NAME = "FlowScope · Step Error Meter"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeStepErrorMeter", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="Per-step local error estimates (Heun–Euler difference of the step-start velocities, "
                        "(Δt/2)·‖v_{i+1} − v_i‖/√d) and NFE accounting (model calls per step); a multi-part latent "
                        "adds each part's local error (over its own dimensions).",
            inputs=[*TRAJECTORY_INPUTS[:2]],
            outputs=[io.Image.Output(display_name="chart"), io.Int.Output(display_name="nfe"),
                     io.Float.Output(display_name="mean_local_error"), io.String.Output(display_name="summary")])

    @classmethod
    def execute(cls, trajectory, trajectory_2=None) -> io.NodeOutput:
        found = _trajectories(cls.NAME, trajectory, trajectory_2)
        series_list, lines = [], []
        for item in found:
            error = item.local_error.mean(1)
            series_list.append(charts.series(f"{item.label}: local error", item.t[:len(error)], error))
            calls_per_step = torch.bincount(item.call_step, minlength=item.steps + 1)[:item.steps]
            lines.append(f"{item.label}: NFE {item.nfe} over {item.steps} steps "
                         f"(per step min {int(calls_per_step.min())}, max {int(calls_per_step.max())}), "
                         f"mean local error {float(error.nanmean()) if error.numel() else float('nan'):.3g}")
            for part in item.parts:
                part_error = part.local_error.mean(1)
                series_list.append(charts.series(f"{_part_label(item, part)}: local error",
                                                 item.t[:len(part_error)], part_error))
                lines.append(f"{_part_label(item, part)}: mean local error "
                             f"{float(part_error.nanmean()) if part_error.numel() else float('nan'):.3g}")
        payload = charts.chart("Local error per step (Heun–Euler estimate)", T_LABEL, "error / √d", series_list,
                               y_log=True, x_reversed=True, parameterization=_parameterization(found),
                               notes=lines + _status_notes(found))
        first_error = found[0].local_error.mean(1)
        mean_error = float(first_error.nanmean()) if first_error.numel() else float("nan")
        return io.NodeOutput(charts.render(payload, node=cls.NAME), found[0].nfe, mean_error, "\n".join(lines),
                             ui=_ui(payload))


class ExportTrajectory(io.ComfyNode):
    NAME = "FlowScope · Export Trajectory"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeExportTrajectory", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="Writes the trajectory statistics as JSON and a per-step CSV into ComfyUI's output folder "
                        "(and the recorded latents as .safetensors when there are any); a multi-part latent adds "
                        "per-part statistics, per-call series and part{p}_ CSV columns.",
            inputs=[TrajectoryType.Input("trajectory"),
                    io.String.Input("filename_prefix", default="flowscope/trajectory")],
            outputs=[io.String.Output(display_name="json_path")])

    @classmethod
    def execute(cls, trajectory, filename_prefix) -> io.NodeOutput:
        (found,) = _trajectories(cls.NAME, trajectory)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        stem = os.path.join(folder, f"{name}_{counter:05}_")
        with open(stem + ".json", "w") as handle:
            json.dump(trajectory_json(found), handle, indent=1)
        rows = trajectory_rows(found)
        with open(stem + ".csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        files = [stem + ".json", stem + ".csv"]
        if found.latents:
            from safetensors.torch import save_file

            save_file({f"step_{i:04d}": latent.contiguous() for i, (_, latent) in enumerate(found.latents)},
                      stem + "_latents.safetensors",
                      metadata={"t": json.dumps([t for t, _ in found.latents])})
            files.append(stem + "_latents.safetensors")
        names = [os.path.join(subfolder, os.path.basename(f)) for f in files]
        return io.NodeOutput(stem + ".json", ui={"text": ["\n".join(names)], "flowscope_files": names})



def parse_list(text: str, who: str, field: str, convert=str) -> list:
    items = [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    if not items:
        raise ValueError(f"{who}, input '{field}': give at least one value (comma-separated)")
    try:
        return [convert(item) for item in items]
    except ValueError as error:
        raise ValueError(f"{who}, input '{field}': {error}") from error


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not a positive step count")
    return value


class CompareSamplers(io.ComfyNode):
    NAME = "FlowScope · Compare Samplers"

    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="FlowScopeCompareSamplers", display_name=cls.NAME, category=CATEGORY, is_output_node=True,
            description="Your own sampler benchmark: runs every sampler × step count from the same noise and "
                        "reports the endpoint RMS error against a high-accuracy self-reference (fs_dopri5 at a "
                        "tight tolerance) as error-vs-NFE chart and table.",
            inputs=[io.Noise.Input("noise"), io.Guider.Input("guider"), io.Latent.Input("latent_image"),
                    io.String.Input("samplers", default="euler, heun, dpmpp_2m, fs_heun, fs_rk4, fs_ab3",
                                    multiline=True, tooltip="Comma-separated names from the sampler dropdown."),
                    io.String.Input("steps", default="4, 8, 16", tooltip="Comma-separated step counts."),
                    io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple"),
                    io.Float.Input("reference_rtol", default=1e-5, min=1e-9, max=1e-2, step=1e-6,
                                   tooltip="Tolerance of the fs_dopri5 self-reference (atol = rtol/10).")],
            outputs=[io.Image.Output(display_name="chart"), io.String.Output(display_name="table")])

    @classmethod
    def execute(cls, noise, guider, latent_image, samplers, steps, scheduler, reference_rtol) -> io.NodeOutput:
        charts.require_matplotlib(cls.NAME)  # fail before the sampling runs, not after
        import comfy.samplers

        from .. import samplers as core

        names = parse_list(samplers, cls.NAME, "samplers")
        unknown = [name for name in names if name not in comfy.samplers.SAMPLER_NAMES]
        if unknown:
            raise ValueError(f"{cls.NAME}, input 'samplers': unknown sampler(s) {', '.join(unknown)}; valid names "
                             f"are those of the KSampler dropdown")
        step_counts = parse_list(steps, cls.NAME, "steps", positive_int)
        model_sampling = guider.model_patcher.get_model_object("model_sampling")

        def grid(count):
            return comfy.samplers.calculate_sigmas(model_sampling, scheduler, count).cpu()

        reference_sampler = comfy.samplers.KSAMPLER(
            comfy_sampler_function(core.sample_adaptive),
            extra_options=reference_options(reference_rtol))
        reference, _, reference_trajectory = record_sampling(guider, reference_sampler, grid(max(step_counts)),
                                                             latent_image, noise, "reference", preview=False)
        def run(name, count):
            samples, _, trajectory = record_sampling(guider, comfy.samplers.sampler_object(name), grid(count),
                                                     latent_image, noise, name, preview=False)
            return samples, trajectory.nfe

        rows = error_vs_nfe(run, names, step_counts, reference)
        series_list = [charts.series(name, [r["nfe"] for r in rows if r["sampler"] == name],
                                     [r["rms_error"] for r in rows if r["sampler"] == name]) for name in names]
        table = ["| sampler | steps | NFE | endpoint RMS error | median per-sample error |", "|---|---|---|---|---|"]
        table += [f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['rms_error']:.3e} | {r['median_error']:.3e} |"
                  for r in rows]
        notes = [f"reference: fs_dopri5 rtol {reference_rtol:g}, {reference_trajectory.nfe} NFE, scheduler "
                 f"{scheduler}; errors are RMS over latent dimensions"]
        payload = charts.chart("Error vs NFE against a self-reference", "NFE (model calls)", "endpoint RMS error",
                               series_list, x_log=True, y_log=True, notes=notes)
        return io.NodeOutput(charts.render(payload, node=cls.NAME), "\n".join(table),
                             ui={**_ui(payload), "text": ["\n".join(table)]})



NODES = [RecordSampling, VelocityNormPlot, StraightnessMeter, StepErrorMeter, ExportTrajectory, CompareSamplers]
