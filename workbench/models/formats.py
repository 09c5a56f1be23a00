"""The checkpoint-format registry: one table, :data:`FORMATS`, in detection order.

``load_model(source)`` asks each format in turn whether ``source`` is in it; the first that says
yes locates the checkpoint and loads it. The formats, in order:

- ``embedded``: nothing (``source=None``): the embedded SmolLM2-135M-Instruct
  (:mod:`workbench.models.embedded`);
- ``meta``: a folder with ``params.json``: Meta's release format (:mod:`workbench.models.meta`);
- ``hf``: a folder with ``config.json``: a Hugging Face folder, safetensors or ``.bin``
  (:mod:`workbench.models.hf_format`);
- ``gguf``: a ``.gguf`` file, or a folder holding exactly one (:mod:`workbench.models.gguf_format`);
- ``hub``: a string that is no local path but looks like ``org/name``: a hub id, passed to
  ``from_pretrained`` for users who are online (:mod:`workbench.models.hf_format`).

Adding a format is one module with a ``detect`` and a ``load`` function and one row here.
Whatever the format, a loader returns an HF ``LlamaForCausalLM``, its tokenizer and a
:class:`~workbench.models.hooked.ModelSource`; code inside checkpoints is never executed.

>>> [f.name for f in FORMATS]
['embedded', 'meta', 'hf', 'gguf', 'hub']
>>> detect_format(None)
('embedded', None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.common.errors import CheckpointError
from workbench.models import embedded, gguf_format, hf_format, meta

Source = str | Path | None  # what load_model was given
Location = Path | str | None  # where the checkpoint is: a file or folder, a hub id, nothing


def _local_path(source: Source) -> Path:
    return Path(source).expanduser()


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how to recognise it and how to load it.

    Attributes:
        name: the format's name (``ModelSource.format``, ``detect_format``).
        detect: ``source -> bool``: whether ``source`` is in this format. Asked in table order,
            so a folder holding both ``params.json`` and ``config.json`` is Meta's.
        load: ``(location, *, dtype, placement, verify) -> (hf_model, tokenizer, source)``.
            ``placement`` is accelerate's ``device_map`` / ``max_memory`` / ``offload_folder``
            (None for one device); a loader that cannot place layers ignores it and
            ``load_model`` dispatches the model afterwards. Checklists are checked (``verify``)
            before any weight is read.
        locate: ``source -> location``: what ``load`` is given (default: the expanded path).
        looks_like: what a folder in this format holds, listed when a folder matches no
            format; None for formats that are not folders.
        near_miss: ``path -> reason | None``: why a path that matched no format is not this
            one when it nearly is (shards without ``params.json``, say).
    """

    name: str
    detect: Callable[[Source], bool]
    load: Callable[..., tuple[Any, Any, Any]]
    locate: Callable[[Source], Location] = _local_path
    looks_like: str | None = None
    near_miss: Callable[[Path], str | None] | None = None


FORMATS: tuple[Format, ...] = (
    Format("embedded", embedded.detect_embedded, embedded.load_embedded_format, locate=lambda source: None),
    Format(
        "meta", meta.detect_meta, meta.load_meta_format,
        looks_like="params.json + consolidated.*.pth", near_miss=meta.meta_near_miss,
    ),
    Format("hf", hf_format.detect_hf, hf_format.load_hf_format, looks_like="config.json + weights"),
    Format(
        "gguf", gguf_format.detect_gguf, gguf_format.load_gguf_format, locate=gguf_format.locate_gguf,
        looks_like="one .gguf", near_miss=gguf_format.gguf_near_miss,
    ),
    Format("hub", hf_format.detect_hub, hf_format.load_hub_format, locate=str),
)  # fmt: skip


def get_format(name: str) -> Format:
    """The row of :data:`FORMATS` called ``name``.

    Raises:
        KeyError: no format has that name.

    >>> get_format("gguf").looks_like
    'one .gguf'
    """
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(f"no checkpoint format {name!r}; the formats are {[f.name for f in FORMATS]}")


def detect_format(source: Source) -> tuple[str, Location]:
    """``(format, location)`` for a model source: the first row of :data:`FORMATS` that matches.

    Args:
        source: ``None``, a file or folder, or a hub id.

    Returns:
        The format's name and what its loader is given: the expanded path (for a folder with
        one ``.gguf``, that file), the hub id, or None for the embedded model.

    Raises:
        CheckpointError: a local file or folder matches no format (the message says why, or
            lists what the folder holds), or the path does not exist and is no hub id.

    >>> detect_format(None)
    ('embedded', None)
    >>> detect_format("meta-llama/Llama-2-7b-hf")
    ('hub', 'meta-llama/Llama-2-7b-hf')
    """
    for fmt in FORMATS:
        if fmt.detect(source):
            return fmt.name, fmt.locate(source)
    path = _local_path(source)
    for fmt in FORMATS:
        if fmt.near_miss is not None and (reason := fmt.near_miss(path)):
            raise CheckpointError(f"{path}: {reason}")
    if path.is_dir():
        expected = [fmt.looks_like for fmt in FORMATS if fmt.looks_like]
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "empty folder"
        raise CheckpointError(
            f"{path}: matches no checkpoint format (expected {', '.join(expected[:-1])}, "
            f"or {expected[-1]}); found: {listing}"
        )
    raise CheckpointError(f"{source}: no such file or folder")
