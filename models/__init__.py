"""Small demo models shipped with the pack (pure torch; the ComfyUI wrapping lives in nodes/demo_models.py)."""
