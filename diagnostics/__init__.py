"""Presentation of diagnostics (pure Python + matplotlib, no ComfyUI imports): chart payloads and images."""
