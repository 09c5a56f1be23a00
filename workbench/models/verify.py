"""Checkpoint integrity: checklists (Meta's ``checklist.chk``, ``*.sha256``) and file structure.

Meta's release ships ``checklist.chk``: one ``<md5>  <file name>`` line per file. Mirrors often
ship ``sha256sum`` output instead. We check whichever is present, file by file, and also check
that each weight file is structurally whole (a safetensors header that fits the file, a GGUF
whose tensors fit the file, a ``.pth`` zip whose central directory is readable), which catches
truncated downloads even without a checklist.

``load_model`` runs the checklist part before it reads a single weight
(:func:`checklist_status`, through :func:`checked_source`), so a corrupt or tampered shard is
refused before it is unpickled.

>>> checklist_status("/nonexistent")
'no checklist'
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.common.errors import CheckpointError, ChecksumError
from workbench.common.files import sha256_file

if TYPE_CHECKING:
    from workbench.models.hooked import ModelSource

CHUNK = 8 << 20
WEIGHT_SUFFIXES = (".pth", ".bin", ".safetensors", ".gguf")


@dataclass
class FileCheck:
    """One file's verdict: ``status`` is ok, mismatch, missing or corrupt."""

    file: str
    check: str  # "md5", "sha256" or "structure"
    status: str
    detail: str = ""


@dataclass
class VerifyReport:
    """The result of :func:`verify_checkpoint`."""

    path: str
    checklists: list[str]
    checks: list[FileCheck]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status == "ok" for c in self.checks)

    @property
    def has_checklist(self) -> bool:
        return bool(self.checklists)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.checks], columns=["file", "check", "status", "detail"])

    def failures(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status != "ok"]


def find_checklists(folder: Path) -> list[Path]:
    """``checklist.chk`` and ``*.sha256`` / ``*.md5`` files in a checkpoint folder."""
    if not folder.is_dir():
        return []
    found = [folder / "checklist.chk"] if (folder / "checklist.chk").is_file() else []
    found += sorted(p for p in folder.iterdir() if p.suffix in (".sha256", ".md5") and p.is_file())
    return found


def verify_checkpoint(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check a checkpoint folder (or single file) against its checklists and for truncation.

    Args:
        path: a checkpoint folder, or a single weight file.
        progress: show a progress bar while hashing.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True only if every check passed.

    Raises:
        CheckpointError: the path does not exist, or a checklist line is malformed.

    >>> report = verify_checkpoint("path/to/llama-7b")                 # doctest: +SKIP
    >>> report.frame()                                                 # doctest: +SKIP
                     file check status detail
    0  consolidated.00.pth   md5     ok
    1         params.json   md5     ok
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    checklists = find_checklists(path) if path.is_dir() else []
    checks: list[FileCheck] = []
    for checklist in checklists:
        algorithm = "md5" if checklist.suffix in (".chk", ".md5") else "sha256"
        for expected, name in _parse_checklist(checklist):
            checks.append(_check_hash(folder / name, name, algorithm, expected, progress))
    weight_files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else [path]
    for file in weight_files:
        problem = structure_problem(file)
        checks.append(FileCheck(file.name, "structure", "corrupt" if problem else "ok", problem or ""))
    return VerifyReport(str(path), [c.name for c in checklists], checks)


def _parse_checklist(checklist: Path) -> list[tuple[str, str]]:
    entries = []
    for lineno, line in enumerate(checklist.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not all(c in "0123456789abcdefABCDEF" for c in parts[0]):
            raise CheckpointError(f"{checklist}: line {lineno} is not '<hex digest>  <file name>': {line!r}")
        entries.append((parts[0].lower(), parts[1].lstrip("*").strip()))
    return entries


def _check_hash(file: Path, name: str, algorithm: str, expected: str, progress: bool) -> FileCheck:
    if not file.is_file():
        return FileCheck(name, algorithm, "missing", "listed in the checklist but not present")
    actual = file_digest(file, algorithm, progress=progress)
    if actual != expected:
        return FileCheck(name, algorithm, "mismatch", f"expected {expected}, got {actual}")
    return FileCheck(name, algorithm, "ok")


def file_digest(file: Path, algorithm: str = "sha256", *, progress: bool = False) -> str:
    """Hex digest of a file, read in chunks so multi-GB shards do not fill memory.

    Args:
        file: the file to hash.
        algorithm: a ``hashlib`` name; ``"md5"`` for Meta's ``checklist.chk``.
        progress: show a progress bar (hashing a 13 GB shard takes a while).

    Returns:
        The lower-case hex digest.

    >>> import tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "f"
    >>> _ = file.write_bytes(b"abc")
    >>> file_digest(file, "md5")
    '900150983cd24fb0d6963f7d28e17f72'
    """
    if algorithm == "sha256" and not progress:
        return sha256_file(file)
    h = hashlib.new(algorithm)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=file.stat().st_size, unit="B", unit_scale=True, desc=f"{algorithm} {file.name}")
    with open(file, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def structure_problem(file: Path) -> str | None:
    """Why a weight file is structurally broken (truncated, bad header), or None if whole.

    Args:
        file: a ``.safetensors``, ``.gguf``, ``.pth`` or ``.bin`` file (others pass).

    Returns:
        A short reason (``"truncated: no header"`` ...), or None.

    >>> structure_problem(Path("model.safetensors"))  # doctest: +SKIP
    'truncated: tensor data needs 1048584 bytes, file has 524292'
    """
    try:
        if file.suffix == ".safetensors":
            return _safetensors_problem(file)
        if file.suffix == ".gguf":
            from workbench.models.gguf_format import read_gguf_metadata

            read_gguf_metadata(file)
            return None
        if file.suffix in (".pth", ".bin"):
            if not zipfile.is_zipfile(file):
                return "not a zip-format PyTorch file (legacy pickles are not read)"
            with zipfile.ZipFile(file) as z:
                last = max(z.infolist(), key=lambda i: i.header_offset)
                if last.header_offset + last.compress_size > file.stat().st_size:
                    return "truncated: the last entry runs past the end of the file"
            return None
    except (CheckpointError, zipfile.BadZipFile, OSError, ValueError) as err:
        return str(err)
    return None


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return "truncated: no header"
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            return "truncated: header runs past the end of the file"
        try:
            header = json.loads(f.read(header_len))
        except json.JSONDecodeError:
            return "corrupt header (not JSON)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"truncated: tensor data needs {8 + header_len + end} bytes, file has {size}"
    return None


def checkpoint_fingerprint(path: str | Path) -> str:
    """A cheap identity for a checkpoint: sha256 over each file's name, size and first MiB.

    Full hashes of a 130 GB checkpoint take minutes; this takes milliseconds and changes when
    any file is renamed, resized or rewritten at its start (where headers live).

    Args:
        path: a checkpoint folder or a single file.

    Returns:
        A sha256 hex digest.

    >>> len(checkpoint_fingerprint("llama/7B"))  # doctest: +SKIP
    64
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for file in files:
        h.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()


def checklist_status(path: str | Path, *, verify: bool = True) -> str:
    """Check a checkpoint against the checklists beside it, before it is loaded.

    Args:
        path: a checkpoint folder, or a single weight file (its folder's checklists count).
        verify: False to skip the check (the status then says so).

    Returns:
        ``"verified"``, ``"skipped"`` (a checklist exists but ``verify`` is False) or
        ``"no checklist"``.

    Raises:
        ChecksumError: a file is missing, differs from its checklist entry or is truncated;
            the message names every such file.

    >>> checklist_status("/nonexistent")
    'no checklist'
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not find_checklists(folder):
        return "no checklist"
    if not verify:
        return "skipped"
    bad = verify_checkpoint(folder).failures()
    if bad:
        listing = "; ".join(f"{c.file}: {c.status} {c.detail}".strip() for c in bad)
        raise ChecksumError(f"{folder}: integrity check failed: {listing}")
    return "verified"


def checked_source(
    format: str, path: str | Path, *, verify: bool = True, details: dict[str, Any] | None = None
) -> ModelSource:
    """The provenance of a local checkpoint: its checklist checked, then its fingerprint.

    Every local format's loader calls this before it reads any weight.

    Args:
        format: the format's name in ``workbench.models.formats.FORMATS``.
        path: the checkpoint folder or file.
        verify: check the checklists (see :func:`checklist_status`).
        details: format-specific facts for ``ModelSource.details``.

    Returns:
        A :class:`~workbench.models.hooked.ModelSource` named after the file or folder.

    Raises:
        ChecksumError: the checklist check failed.

    >>> checked_source("hf", "llama-7b-hf").checksum_status  # doctest: +SKIP
    'verified'
    """
    # Imported here: hooked pulls in TransformerLens, which `workbench verify` does not need.
    from workbench.models.hooked import ModelSource

    path = Path(path)
    status = checklist_status(path, verify=verify)
    return ModelSource(format, str(path), path.name, checkpoint_fingerprint(path), status, dict(details or {}))
