"""The on-disk format of an activation store, and the sinks that write rows into it.

Why ``.npy`` shards: numpy memory-maps them natively (``np.load(mmap_mode="r")``) and
``torch.from_numpy`` wraps a map without a copy, the format is one documented header plus raw
bytes (so the same inputs give the same bytes), and every tool reads it. A shard is one folder
of one ``.npy`` per hook, written with plain ``pwrite`` calls (a full disk raises ``OSError``,
where writing through a memory map would kill the process with SIGBUS) under a temporary name,
fsynced and renamed when complete. The manifest, rewritten atomically after each shard, lists
only complete shards (each with its files' sizes and sha256, see ``integrity.py``), so a killed job resumes at the first missing shard and ends byte-identical
to an uninterrupted run. ``store.py`` reads what is written here.

A sink is where a run's rows go: :class:`MemorySink` (preallocated arrays, ``path=None``) or
:class:`DiskSink` (shard folders and the manifest). Both hand out one shard writer at a time
(``open_shard``), which is committed when complete or aborted.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workbench.common.files import atomic_write, rename_into_place
from workbench.common.versions import versions
from workbench.store.integrity import file_record
from workbench.store.store import FORMAT_VERSION, MANIFEST, ActivationStore, ShardedArray, StoreError

if TYPE_CHECKING:
    from workbench.store.plan import Plan

STORE_DTYPES = {"float32": np.float32, "float16": np.float16}
_OWN_FILES = {MANIFEST, "meta.parquet", "tokens.parquet", "shards"}


class MemorySink:
    """Rows into preallocated in-memory arrays (``path=None``)."""

    def __init__(self, config: dict, plan: Plan):
        self.config, self.plan = config, plan
        n_rows = config["n_rows"]
        self.arrays = {h: np.zeros((n_rows, *f), STORE_DTYPES[config["dtype"]]) for h, f in config["hook_features"].items()}
        self.bytes_written = 0

    def has_shard(self, k: int) -> bool:
        return False

    def open_shard(self, k: int, start: int, stop: int):
        return _MemoryShard(self)

    def finish(self) -> None:
        pass

    def store(self) -> ActivationStore:
        arrays = {h: ShardedArray([a]) for h, a in self.arrays.items()}
        return ActivationStore(self.config, self.plan.meta, arrays, self.plan.tokens_frame(), None, True)


class _MemoryShard:
    def __init__(self, sink: MemorySink):
        self.sink = sink

    def write(self, hook: str, example: int, rows: np.ndarray) -> None:
        start = int(self.sink.plan.meta["row_start"].iloc[example])
        self.sink.arrays[hook][start : start + len(rows)] = rows
        self.sink.bytes_written += rows.nbytes

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


class DiskSink:
    """Rows into ``.npy`` shard files; see the module docstring for the crash-safety rules."""

    def __init__(self, path: Path, config: dict, plan: Plan):
        self.path, self.config, self.plan = path, config, plan
        self.bytes_written = 0
        self.manifest = self._open_or_create()

    def _open_or_create(self) -> dict:
        manifest_file = self.path / MANIFEST
        if manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("config") != self.config:
                raise StoreError(_difference_message(self.path, manifest.get("config", {}), self.config))
            for stale in (self.path / "shards").glob("*.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)  # shards a killed run left half-written
            return manifest
        if self.path.exists() and any(p.name not in _OWN_FILES and ".tmp" not in p.name for p in self.path.iterdir()):
            raise StoreError(f"{self.path}: exists and is not an activation store; refusing to write into it")
        # A fresh store, or one killed before its first manifest: (re)write everything.
        if self.path.exists():
            shutil.rmtree(self.path / "shards", ignore_errors=True)
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "meta.parquet", lambda f: self.plan.meta.to_parquet(f, index=False))
        atomic_write(self.path / "tokens.parquet", self._write_tokens)
        manifest = {"format_version": FORMAT_VERSION, "config": self.config, "shards": [],
                    "complete": False, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._save(manifest)
        return manifest

    def _write_tokens(self, f) -> None:
        import pyarrow.parquet as pq

        from workbench.store.plan import token_schema

        # One row group per batch of examples, written as it is built: the token table of a
        # dataset never sits in memory whole (pandas reads it back as one frame of lists).
        with pq.ParquetWriter(f, token_schema(), compression="snappy") as writer:
            for batch in self.plan.token_batches():
                writer.write_batch(batch)

    def has_shard(self, k: int) -> bool:
        return any(s["index"] == k for s in self.manifest["shards"])

    def open_shard(self, k: int, start: int, stop: int) -> "_DiskShard":
        return _DiskShard(self, k, start, stop)

    def shard_done(self, entry: dict) -> None:
        self.manifest["shards"] = sorted(self.manifest["shards"] + [entry], key=lambda s: s["index"])
        self._save(self.manifest)

    def finish(self) -> None:
        self.manifest["complete"] = True
        self._save(self.manifest)

    def _save(self, manifest: dict) -> None:
        atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=1))

    def store(self) -> ActivationStore:
        return ActivationStore.open(self.path)


class _DiskShard:
    def __init__(self, sink: DiskSink, k: int, start: int, stop: int):
        self.sink, self.k, self.start, self.stop = sink, k, start, stop
        meta = sink.plan.meta
        self.row0 = int(meta["row_start"].iloc[start])
        n_rows = int(meta["row_stop"].iloc[stop - 1]) - self.row0
        self.name = f"{k:05d}"
        self.tmp = sink.path / "shards" / f"{self.name}.tmp-{os.getpid()}"
        self.tmp.mkdir(parents=True)
        dtype = np.dtype(STORE_DTYPES[sink.config["dtype"]])
        self.files, self.offsets, self.row_bytes = {}, {}, {}
        try:
            for hook, features in sink.config["hook_features"].items():
                fd = os.open(self.tmp / f"{hook}.npy", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self.files[hook] = fd
                header = _npy_header(dtype, (n_rows, *features))
                os.pwrite(fd, header, 0)
                self.offsets[hook] = len(header)
                self.row_bytes[hook] = int(np.prod(features, dtype=np.int64)) * dtype.itemsize
                os.ftruncate(fd, len(header) + n_rows * self.row_bytes[hook])
        except OSError as err:
            self.abort()
            raise _disk_error(sink.path, k, err) from err

    def write(self, hook: str, example: int, rows: np.ndarray) -> None:
        row = int(self.sink.plan.meta["row_start"].iloc[example]) - self.row0
        data = np.ascontiguousarray(rows).tobytes()
        try:
            written = os.pwrite(self.files[hook], data, self.offsets[hook] + row * self.row_bytes[hook])
            if written != len(data):
                raise OSError(28, "short write (disk full?)")
        except OSError as err:
            raise _disk_error(self.sink.path, self.k, err) from err
        self.sink.bytes_written += len(data)

    def commit(self) -> None:
        try:
            for fd in self.files.values():
                os.fsync(fd)
                os.close(fd)
            self.files = {}
            # Sizes and checksums of the bytes as written (read back from the page cache):
            # ActivationStore.open checks the sizes, `workbench verify` the checksums.
            records = {hook: file_record(self.tmp / f"{hook}.npy") for hook in self.sink.config["hook_features"]}
            # A complete shard a killed run renamed but did not record is replaced.
            rename_into_place(self.tmp, self.sink.path / "shards" / self.name)
        except OSError as err:
            raise _disk_error(self.sink.path, self.k, err) from err
        self.sink.shard_done({"index": self.k, "name": self.name, "start": self.start, "stop": self.stop,
                              "files": records})

    def abort(self) -> None:
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files = {}
        shutil.rmtree(self.tmp, ignore_errors=True)


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _disk_error(path: Path, k: int, err: OSError) -> StoreError:
    return StoreError(f"{path}: writing shard {k} failed ({err.strerror or err}); the store keeps "
                      f"shards 0..{k - 1} and opens up to them; rerun with the same arguments to "
                      f"resume from shard {k}")


def _difference_message(path: Path, old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    detail = "; ".join(f"{k}: stored {old.get(k)!r:.80} vs now {new.get(k)!r:.80}" for k in keys)
    return (f"{path}: holds a store made with different arguments ({detail}). Rerun with the "
            f"same arguments to resume it, or choose another path.")
