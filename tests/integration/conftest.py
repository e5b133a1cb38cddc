import pytest


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info")


@pytest.fixture(scope="session")
def digit_classifier():
    from models.digits_data import NearestClassMean, load_digits_split

    train_x, train_y, _, _ = load_digits_split()
    return NearestClassMean(train_x, train_y)
