"""Trajectory diagnostics (pure torch + matplotlib, no ComfyUI imports): the recorder, the path statistics, the
export rows and the chart payloads and images; nodes/diagnostic_nodes.py connects them to ComfyUI."""
