import pytest


@pytest.fixture(scope="session")
def embedded():
    import workbench as wb

    return wb.load_model(device="cpu")
