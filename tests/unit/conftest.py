import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: tiny_hf, meta_checkpoint, ...

from tiny_hf import write_hf_folder  # noqa: E402


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """A tiny HF LLaMA folder and the in-memory model it was written from."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    return folder, write_hf_folder(folder)


@pytest.fixture(scope="session")
def tiny_model(hf_folder):
    import workbench as wb

    return wb.load_model(hf_folder[0], device="cpu")
