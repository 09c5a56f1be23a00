"""Damage to a store on disk: the cheap size check on open, checksums, and repair.

When a shard is committed its manifest entry records every ``.npy`` file's size and sha256
(``files``: hook -> ``{"size", "sha256"}``). :meth:`ActivationStore.open` compares sizes only (a
``stat`` per file), which catches truncation and missing files; :func:`verify_store` reads every
byte and compares checksums, which also catches a flipped bit. Stores written before sizes were
recorded have no ``files``: for them the size a file must have is read from its own ``.npy``
header (shape and dtype), which still catches truncation. :func:`repair_store` drops damaged
shards from the manifest, so rerunning the same ``cache_activations`` call recomputes exactly
those shards and ends byte-identical to an undamaged run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.common.files import atomic_write, sha256_file
from workbench.store.store import MANIFEST, StoreError


def file_record(file: Path) -> dict:
    """What the manifest records about a committed file: ``{"size": bytes, "sha256": hex}``."""
    return {"size": file.stat().st_size, "sha256": sha256_file(file)}


def npy_size_from_header(file: Path) -> int:
    """The size a ``.npy`` file must have according to its header (raises ``ValueError`` if unreadable)."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        return f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def size_problem(file: Path, shard: dict, hook: str) -> str | None:
    """Why ``file`` (hook ``hook`` of manifest entry ``shard``) is damaged by its size, or None."""
    if not file.is_file():
        return "missing"
    actual = file.stat().st_size
    recorded = shard.get("files", {}).get(hook)
    if recorded is not None:
        if actual != recorded["size"]:
            return f"{actual} bytes, the manifest records {recorded['size']}"
        return None
    try:  # a store from before sizes were recorded: the header says what the size must be
        expected = npy_size_from_header(file)
    except (ValueError, OSError, EOFError) as err:
        return f"unreadable .npy header ({err})"
    if actual != expected:
        return f"{actual} bytes, its .npy header needs {expected}"
    return None


def damage_message(path: Path, damaged: list[tuple[dict, str, str]]) -> str:
    """A StoreError message naming every damaged (shard, hook) and how to recover."""
    lines = [f"  shard {s['name']} (index {s['index']}, examples {s['start']}..{s['stop'] - 1}), "
             f"hook {hook}: {problem}" for s, hook, problem in damaged]
    indices = sorted({s["index"] for s, _, _ in damaged})
    return (f"{path}: damaged store ({len(damaged)} file(s)):\n" + "\n".join(lines) + "\n"
            f"To recover, run `workbench cache ... --repair` with the same arguments (it drops the "
            f"damaged shard(s) from the manifest and recomputes them), or remove shard(s) {indices} "
            f"from the \"shards\" list of {path / MANIFEST} and rerun the same cache_activations call.")


@dataclass
class Check:
    """One file of a store, checked: ``status`` is ``ok``, ``missing``, ``mismatch`` or ``unchecked``."""

    shard: str
    hook: str
    file: str
    status: str
    detail: str


@dataclass
class StoreReport:
    """What :func:`verify_store` found."""

    path: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status in ("ok", "unchecked") for c in self.checks)

    @property
    def damaged_shards(self) -> list[int]:
        return sorted({int(c.shard) for c in self.checks if c.status not in ("ok", "unchecked") and c.shard != "-"})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.checks], columns=["shard", "hook", "file", "status", "detail"])


def _read_manifest(path: Path) -> dict:
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise StoreError(f"{path}: not an activation store (no {MANIFEST})")
    try:
        return json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{manifest_file}: not valid JSON ({err}); the store cannot be read") from None


def verify_store(path: str | Path) -> StoreReport:
    """Check every shard file of the store at ``path`` against the manifest's sizes and checksums.

    Files of stores written before checksums were recorded are checked against their ``.npy``
    header (size) and reported ``unchecked`` for the checksum part.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    checks = []
    for name in ("meta.parquet", "tokens.parquet"):
        file = path / name
        checks.append(Check("-", "-", name, "ok" if file.is_file() else "missing", ""))
    for shard in sorted(manifest["shards"], key=lambda s: s["index"]):
        for hook in manifest["config"]["hook_features"]:
            file = path / "shards" / shard["name"] / f"{hook}.npy"
            checks.append(_check_file(file, shard, hook, str(file.relative_to(path))))
    return StoreReport(str(path), checks)


def _check_file(file: Path, shard: dict, hook: str, shown: str) -> Check:
    index = str(shard["index"])
    problem = size_problem(file, shard, hook)
    if problem == "missing":
        return Check(index, hook, shown, "missing", "no such file")
    if problem is not None:
        return Check(index, hook, shown, "mismatch", problem)
    recorded = shard.get("files", {}).get(hook)
    if recorded is None:
        return Check(index, hook, shown, "unchecked", "size matches its header; no checksum recorded (older store)")
    digest = sha256_file(file)
    if digest != recorded["sha256"]:
        return Check(index, hook, shown, "mismatch", f"sha256 {digest[:16]}..., the manifest records "
                                                     f"{recorded['sha256'][:16]}...")
    return Check(index, hook, shown, "ok", f"sha256 {digest[:16]}...")


def repair_store(path: str | Path) -> list[int]:
    """Drop damaged shards (checksum, size or missing file) from the manifest; returns their indices.

    The store is marked incomplete and the damaged shard folders are removed, so rerunning the
    same ``cache_activations`` call recomputes exactly those shards.
    """
    path = Path(path)
    report = verify_store(path)
    missing_tables = [c.file for c in report.checks if c.shard == "-" and c.status != "ok"]
    if missing_tables:
        raise StoreError(f"{path}: {missing_tables} missing; shards cannot be repaired without them. "
                         f"Remove the store folder and rerun to recompute it.")
    dropped = report.damaged_shards
    if not dropped:
        return []
    manifest = _read_manifest(path)
    names = [s["name"] for s in manifest["shards"] if s["index"] in dropped]
    manifest["shards"] = [s for s in manifest["shards"] if s["index"] not in dropped]
    manifest["complete"] = False
    # The manifest first: a shard folder is only trusted when the manifest lists it.
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=1))
    for name in names:
        shutil.rmtree(path / "shards" / name, ignore_errors=True)
    return dropped
