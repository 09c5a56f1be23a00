"""Reading PyTorch pickles (``.pth`` / ``.bin``) without ever executing code hidden in them.

Unofficial copies of LLaMA weights circulate widely; a pickle can run arbitrary code on load.
``torch.load(weights_only=True)`` only rebuilds tensors and plain containers, and refuses
anything else. We turn its refusals and torch's truncation errors into messages that name the
file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from workbench.common.errors import CheckpointError


def load_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.bin`` state dict with ``weights_only=True`` onto the CPU.

    Args:
        path: the file to read.

    Returns:
        The state dict (name -> tensor).

    Raises:
        CheckpointError: the file is missing, truncated, not a state dict, or holds pickled
            objects other than tensors (which are never executed).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pth")
    >>> torch.save({"w": torch.ones(2)}, p)
    >>> load_torch_file(p)["w"].tolist()
    [1.0, 1.0]
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the pickle holds objects other than tensors "
            f"(it could execute code), so it was not run. Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path}: cannot read PyTorch checkpoint (truncated or corrupt?): "
            f"{str(err).splitlines()[0]}"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _can_mmap(path: Path) -> bool:
    # mmap avoids a second copy of multi-GB shards in RAM, but only works on the zip format.
    return zipfile.is_zipfile(path)
