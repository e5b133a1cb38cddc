"""Nodes of the shipped demo models: a loader (name → MODEL) and a digit conditioning (→ CONDITIONING)."""
from __future__ import annotations

from ..models.networks import condition_vector
from .comfy_io import io
from .demo_models import DEMO_MODELS, DemoModelError, load_demo_model

DIGIT_CHOICES = ["empty"] + [str(d) for d in range(10)]


class DemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeDemoModelLoader",
            display_name="FlowScope · Demo Model Loader",
            category="FlowScope/demo",
            description="Loads one of the small demo models shipped with FlowScope (offline, no downloads).",
            inputs=[io.Combo.Input("model_name", options=list(DEMO_MODELS), default="digits-flow",
                                   tooltip="digits-flow: rectified-flow (CONST) model of 8×8 digits; "
                                           "digits-diffusion: the same as an EPS model with SD1.5's β schedule; "
                                           "analytic: exact flow of a Gaussian mixture fitted to the digits.")],
            outputs=[io.Model.Output(tooltip="Use with an EmptyLatentImage of 64×64 (an 8×8 pixel latent) "
                                             "and the pixel_space VAE.")],
        )

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        try:
            return io.NodeOutput(load_demo_model(model_name))
        except DemoModelError as error:
            raise ValueError(f"FlowScope · Demo Model Loader, input 'model_name': {error}") from error


class DigitConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlowScopeDigitConditioning",
            display_name="FlowScope · Digit Conditioning",
            category="FlowScope/demo",
            description="Conditioning for the digits demo models: a digit 0–9, or 'empty' (the unconditional "
                        "label, use it as the negative for classifier-free guidance).",
            inputs=[io.Combo.Input("digit", options=DIGIT_CHOICES, default="3")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, digit) -> io.NodeOutput:
        if digit not in DIGIT_CHOICES:
            raise ValueError(f"FlowScope · Digit Conditioning, input 'digit': {digit!r} is not one of "
                             f"{', '.join(DIGIT_CHOICES)}")
        vector = condition_vector(None if digit == "empty" else int(digit))
        return io.NodeOutput([[vector, {}]])


NODES = [DemoModelLoader, DigitConditioning]
