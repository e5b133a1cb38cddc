import pytest

from scripts.comfy_server import ComfyServer


@pytest.fixture(scope="session")
def comfy():
    """One real ComfyUI server (only this pack enabled) for the whole test session; always stopped."""
    server = ComfyServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info")


@pytest.fixture(scope="session")
def digit_classifier():
    from models.digits_data import NearestClassMean, load_digits_split

    train_x, train_y, _, _ = load_digits_split()
    return NearestClassMean(train_x, train_y)
