"""Fixtures shared by the integration and browser tests."""
import pytest

from scripts.comfy_server import ComfyServer


@pytest.fixture(scope="session")
def comfy():
    """One real ComfyUI server (only this pack enabled) for the whole test session; always stopped."""
    server = ComfyServer()
    server.start()
    yield server
    server.cleanup()
