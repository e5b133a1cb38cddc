import pytest
import torch


@pytest.fixture(autouse=True)
def inference_mode():
    """ComfyUI's executor runs every node under ``torch.inference_mode()``; the tiny models are built under it too."""
    with torch.inference_mode():
        yield
