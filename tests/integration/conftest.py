import pytest


@pytest.fixture(scope="session")
def embedded():
    import workbench as wb

    return wb.load_model(device="cpu")


@pytest.fixture(scope="session")
def data_dir():
    """The shared benchmark data: $WORKBENCH_DATA, else ../shared/data beside the checkout."""
    import os
    from pathlib import Path

    folder = Path(os.environ.get("WORKBENCH_DATA") or Path(__file__).parents[3] / "shared" / "data")
    if not (folder / "MANIFEST.json").is_file():
        pytest.skip(f"benchmark data not found at {folder} (set WORKBENCH_DATA)")
    return folder
