"""The one place the pack imports ComfyUI's V3 node API (``comfy_api.latest``, present since ComfyUI 0.3.48)."""
from comfy_api.latest import ComfyExtension, io  # noqa: F401

# The pack's one custom socket type: a recorded sampling trajectory (diagnostics.trajectory.Trajectory).
TrajectoryType = io.Custom("FLOWSCOPE_TRAJECTORY")
