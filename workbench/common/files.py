"""Atomic file writes: the one way the workbench replaces a file or a folder.

Every write goes to a temporary name beside its target, is flushed and fsynced, and is renamed
over the target only when complete (the folder is fsynced too), so a killed process or a full
disk leaves either the old file or the new one, never half of one.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write(folder / "a.txt", "hello").read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Replace ``path`` with ``data`` (bytes, text as UTF-8, or a function writing to a binary file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``obj`` as JSON (non-JSON values written with ``str``)."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success.

    With ``directory=True`` the temporary path is an empty folder (a model saved with
    ``save_pretrained``, say) and every file in it is fsynced before the rename; an existing
    folder at ``path`` is replaced. On error the temporary file or folder is removed and
    ``path`` is left as it was.

    >>> import pandas as pd                                          # doctest: +SKIP
    >>> with atomic_path("samples.parquet") as tmp:                  # doctest: +SKIP
    ...     pd.DataFrame({"a": [1]}).to_parquet(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        for file in (p for p in tmp.rglob("*") if p.is_file()) if directory else [tmp]:
            _fsync_file(file)
        rename_into_place(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def rename_into_place(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a complete, fsynced ``tmp`` file or folder over ``target`` and make it durable.

    A folder already at ``target`` is removed first. For writers whose temporary file outlives
    one ``with`` block (a store shard written batch by batch); everything else uses
    :func:`atomic_path`.
    """
    target = Path(target)
    if Path(tmp).is_dir() and target.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
