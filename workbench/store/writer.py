"""``cache_activations``: run a model over a dataset and stream chosen activations to disk.

Why ``.npy`` shards: numpy memory-maps them natively (``np.load(mmap_mode="r")``) and
``torch.from_numpy`` wraps a map without a copy, the format is one documented header plus raw
bytes (so the same inputs give the same bytes), and every tool reads it. A shard is one folder
of one ``.npy`` per hook, written with plain ``pwrite`` calls (a full disk raises ``OSError``,
where writing through a memory map would kill the process with SIGBUS) under a temporary name,
fsynced and renamed when complete. The manifest, rewritten atomically after each shard, lists
only complete shards, so a killed job resumes at the first missing shard and ends byte-identical
to an uninterrupted run.

Examples keep their input order in the store. Within a shard they are batched longest-first,
so padding stays small; sequences are right-padded, so with causal attention no real token sees
a pad, and pad positions are never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from workbench.models.hooks import HookSelection, select_hooks
from workbench.store.store import FORMAT_VERSION, MANIFEST, ActivationStore, ShardedArray, StoreError

STORE_DTYPES = {"float32": np.float32, "float16": np.float16}
_OWN_FILES = {MANIFEST, "meta.parquet", "tokens.parquet", "shards"}


def cache_activations(
    model,
    texts: Iterable[str] | pd.Series | pd.DataFrame,
    hooks: HookSelection = "blocks.*.hook_resid_post",
    *,
    positions: Any = "last",
    path: str | Path | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    text_column: str = "text",
    too_long: str = "truncate",
    shard_size: int = 4096,
    progress: bool = True,
) -> ActivationStore:
    """Cache activations of ``hooks`` for every text, streaming to ``path`` (or in memory).

    Args:
        model: a :class:`~workbench.HookedLlama`.
        texts: a list of strings, a pandas Series, a DataFrame (its ``text_column`` is the text,
            its other columns become metadata, e.g. labels), or any iterable of strings.
        hooks: hook names, glob patterns (``"blocks.*.hook_resid_post"``) or a predicate.
            Hooks must have ``[batch, pos, ...]`` activations (not attention patterns).
        positions: ``"last"`` (last token), ``"mean"`` (mean over tokens after BOS), ``"all"``
            (every token, one row each), a ``slice`` of positions (one row each), the name of a
            DataFrame column holding one position per example, or a sequence of positions.
        path: folder to write; ``None`` keeps the store in memory.
        dtype: ``"float32"`` or ``"float16"`` on disk.
        batch_size: examples per forward pass.
        text_column: the text column when ``texts`` is a DataFrame.
        too_long: ``"truncate"`` (with a warning) or ``"error"`` for texts longer than the
            model's context window.
        shard_size: examples per shard (the unit of resumption).
        progress: show a progress bar (tqdm; examples/s, tokens/s, bytes written, ETA).

    Returns:
        The :class:`ActivationStore`. Rerunning with the same arguments resumes an unfinished
        store; different arguments into the same path are refused.

    >>> store = wb.cache_activations(model, ["a cat", "a dog"], hooks="blocks.*.hook_resid_post",
    ...                              path="runs/acts-demo")            # doctest: +SKIP
    >>> store["blocks.3.hook_resid_post"].shape                          # doctest: +SKIP
    (2, 576)
    """
    plan, config = prepare_cache(model, texts, hooks, positions=positions, dtype=dtype, batch_size=batch_size,
                                 text_column=text_column, too_long=too_long, shard_size=shard_size)
    sink = DiskSink(Path(path), config, plan) if path is not None else MemorySink(config, plan)
    _run(model, plan, config, sink, progress)
    return sink.store()


def prepare_cache(model, texts, hooks: HookSelection, *, positions: Any, dtype: str, batch_size: int,
                  text_column: str, too_long: str, shard_size: int) -> tuple["Plan", dict]:
    """Check the arguments and plan a cache run: ``(plan, config)`` (see :func:`cache_activations`)."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: the store holds one of {sorted(STORE_DTYPES)}")
    if too_long not in ("truncate", "error"):
        raise ValueError(f"too_long={too_long!r}: use 'truncate' or 'error'")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be positive")
    frame = as_frame(texts, text_column)
    hook_names, features = _check_hooks(model, hooks)
    policy, frame = _parse_positions(positions, frame)
    plan = plan_examples(model, frame, policy, too_long)
    config = {
        "model": {k: model.source.__dict__[k] for k in ("name", "format", "path", "fingerprint")},
        "tokenizer": {"class": type(model.tokenizer).__name__, "vocab_size": len(model.tokenizer),
                      "bos_token_id": model.tokenizer.bos_token_id},
        "hooks": hook_names,
        "hook_features": {h: list(features[h]) for h in hook_names},
        "dtype": dtype,
        "positions": policy,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "too_long": too_long,
        "n_ctx": int(model.cfg.n_ctx),
        "n_examples": len(plan.meta),
        "n_rows": int(plan.meta["row_stop"].iloc[-1]),
        "data_hash": _data_hash(frame),
    }
    return plan, config


@dataclass
class Plan:
    """What will be stored: per-example token ids, stored positions and row ranges."""

    meta: pd.DataFrame  # example_id, text, n_tokens, row_start, row_stop, + user columns
    tokens: pd.DataFrame  # token_ids, str_tokens, stored_positions

    def shards(self, shard_size: int) -> list[tuple[int, int]]:
        n = len(self.meta)
        return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def as_frame(texts, text_column: str = "text") -> pd.DataFrame:
    """Normalise the accepted input kinds into a DataFrame with a ``text`` column."""
    if isinstance(texts, pd.DataFrame):
        if text_column not in texts.columns:
            raise ValueError(f"text_column={text_column!r} is not a column; columns: {list(texts.columns)}")
        frame = texts.rename(columns={text_column: "text"}).reset_index(drop=True)
    elif isinstance(texts, pd.Series):
        frame = pd.DataFrame({"text": texts.tolist()})
    elif isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a collection of strings, not a single string; wrap it in a list")
    else:
        frame = pd.DataFrame({"text": list(texts)})
    if frame.empty:
        raise ValueError("texts is empty: nothing to cache")
    for row, text in enumerate(frame["text"]):
        if not isinstance(text, str):
            raise TypeError(f"texts row {row} is {type(text).__name__} ({text!r:.60}), not a string")
    reserved = {"example_id", "n_tokens", "row_start", "row_stop"} & set(frame.columns)
    if reserved:
        raise ValueError(f"columns {sorted(reserved)} are reserved by the store; rename them")
    return frame


def _check_hooks(model, selection: HookSelection) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    names = select_hooks(model, selection)
    catalogue = model.hook_catalogue().set_index("name")
    sizes = _dim_sizes(model)
    features = {}
    for name in names:
        dims = catalogue.loc[name, "shape"].strip("[]").split(", ")
        if dims[:2] != ["batch", "pos"] or "pos" in dims[2:]:
            raise ValueError(
                f"hook {name!r} has shape {catalogue.loc[name, 'shape']}: the store holds "
                f"[batch, pos, ...] activations; attention patterns and scores are per query "
                f"and key position (cache them with run_with_cache)"
            )
        features[name] = tuple(sizes[d] for d in dims[2:])
    return names, features


def _dim_sizes(model) -> dict[str, int]:
    from workbench.models.hooks import named_dims

    return {**named_dims(model), "1": 1}


def _parse_positions(positions, frame: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    base = {"policy": None, "per_token": False, "slice": None, "column": None}
    if isinstance(positions, str) and positions in ("last", "mean", "all"):
        return {**base, "policy": positions, "per_token": positions == "all"}, frame
    if isinstance(positions, slice):
        return {**base, "policy": "slice", "per_token": True,
                "slice": [positions.start, positions.stop, positions.step]}, frame
    if isinstance(positions, str):
        if positions not in frame.columns:
            raise ValueError(
                f"positions={positions!r} is neither 'last', 'mean', 'all' nor a column of the data "
                f"(columns: {list(frame.columns)})"
            )
        column = positions
    else:
        values = list(positions)
        if len(values) != len(frame):
            raise ValueError(f"positions has {len(values)} entries for {len(frame)} texts")
        frame = frame.assign(position=values)
        column = "position"
    for row, value in enumerate(frame[column]):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"positions column {column!r} row {row} is {value!r}, not an integer")
    return {**base, "policy": "index", "column": column}, frame


def plan_examples(model, frame: pd.DataFrame, policy: dict, too_long: str) -> Plan:
    """Tokenize every text and decide which positions (rows) each example stores."""
    n_ctx = int(model.cfg.n_ctx)
    token_ids, stored, truncated = [], [], []
    decoded: dict[int, str] = {}
    for row, text in enumerate(frame["text"]):
        ids = model.to_tokens(text, truncate=False, move_to_device=False)[0].tolist()
        if len(ids) > n_ctx:
            if too_long == "error":
                raise ValueError(f"texts row {row} has {len(ids)} tokens, more than the context window ({n_ctx})")
            truncated.append(row)
            ids = ids[:n_ctx]
        token_ids.append(ids)
        stored.append(_stored_positions(policy, len(ids), frame, row))
    if truncated:
        warnings.warn(f"{len(truncated)} texts longer than the context window ({n_ctx} tokens) were "
                      f"truncated (rows {truncated[:10]}{' ...' if len(truncated) > 10 else ''})", stacklevel=3)
    tok = model.tokenizer
    str_tokens = []
    for ids in token_ids:
        missing = [i for i in set(ids) if i not in decoded]
        decoded.update(zip(missing, tok.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)))
        str_tokens.append([decoded[i] for i in ids])
    n_rows = [len(p) if policy["per_token"] else 1 for p in stored]
    stops = np.cumsum(n_rows)
    meta = pd.DataFrame({"example_id": np.arange(len(frame)), "text": frame["text"],
                         "n_tokens": [len(ids) for ids in token_ids],
                         "row_start": stops - n_rows, "row_stop": stops})
    extra = frame.drop(columns=["text"])
    meta = pd.concat([meta, extra.reset_index(drop=True)], axis=1)
    tokens = pd.DataFrame({"token_ids": token_ids, "str_tokens": str_tokens, "stored_positions": stored})
    return Plan(meta, tokens)


def _stored_positions(policy: dict, length: int, frame: pd.DataFrame, row: int) -> list[int]:
    kind = policy["policy"]
    if kind == "last":
        return [length - 1]
    if kind == "mean":
        return list(range(1, length)) if length > 1 else [0]  # BOS is an outlier; leave it out
    if kind == "all":
        return list(range(length))
    if kind == "slice":
        return list(range(length))[slice(*policy["slice"])]
    position = int(frame[policy["column"]].iloc[row])
    if not -length <= position < length:
        raise ValueError(f"positions row {row}: position {position} is outside its {length} tokens")
    return [position % length]


def _data_hash(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(frame.to_json(orient="records", lines=True, default_handler=str).encode())
    return h.hexdigest()


# --- running the model --------------------------------------------------------------------


def _run(model, plan: Plan, config: dict, sink, progress: bool) -> None:
    todo = pending_shards(plan, config, sink)
    lengths = plan.meta["n_tokens"].to_numpy()
    bar = _progress_bar(int(sum(lengths[a:b].sum() for _, (a, b) in todo)), progress)
    started = time.perf_counter()
    examples_done = 0

    def advance(batch: np.ndarray) -> None:
        nonlocal examples_done
        examples_done += len(batch)
        if bar is not None:
            bar.update(int(lengths[batch].sum()))
            rate = examples_done / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:.1f} ex/s, {_human(sink.bytes_written)} written")

    for k, (start, stop) in todo:
        run_shard(model, plan, config, sink, k, start, stop, on_batch=advance)
    sink.finish()
    if bar is not None:
        bar.close()


def pending_shards(plan: Plan, config: dict, sink) -> list[tuple[int, tuple[int, int]]]:
    """``[(k, (start, stop))]`` of the shards ``sink`` does not hold yet."""
    return [(k, span) for k, span in enumerate(plan.shards(config["shard_size"])) if not sink.has_shard(k)]


def run_shard(model, plan: Plan, config: dict, sink, k: int, start: int, stop: int, on_batch=None) -> None:
    """Compute and commit shard ``k`` (examples ``start:stop``); the unit of work and of resumption.

    The result depends only on the plan, the config and the model, not on which process runs
    it or on what ran before: distributed workers (``workbench.distributed``) call this too.
    """
    hooks, policy = config["hooks"], config["positions"]
    np_dtype = STORE_DTYPES[config["dtype"]]
    lengths = plan.meta["n_tokens"].to_numpy()
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    shard = sink.open_shard(k, start, stop)
    try:
        order = start + np.argsort(-lengths[start:stop], kind="stable")  # longest first
        for b in range(0, len(order), config["batch_size"]):
            batch = order[b : b + config["batch_size"]]
            acts = _forward(model, plan, batch, hooks, pad_id)
            for j, example in enumerate(batch):
                positions = plan.tokens["stored_positions"].iloc[example]
                for hook in hooks:
                    shard.write(hook, example, _select(acts[hook][j], positions, policy).astype(np_dtype))
            if on_batch is not None:
                on_batch(batch)
        shard.commit()
    except BaseException:
        shard.abort()
        raise


class _AllCaptured(Exception):
    """Raised by the last hook to fire: the rest of the forward pass is not needed."""


def _forward(model, plan: Plan, batch: np.ndarray, hooks: list[str], pad_id: int):
    ids = [plan.tokens["token_ids"].iloc[i] for i in batch]
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for j, x in enumerate(ids):
        tokens[j, : len(x)] = torch.as_tensor(x)  # right padding: no real token attends to a pad
    captured: dict[str, np.ndarray] = {}

    def capturer(name: str):
        # Keyed by the requested name: aliases (hook_resid_pre / hook_in) share one hook point.
        def capture(act, hook):
            captured[name] = act.detach().float().cpu().numpy()
            if len(captured) == len(hooks):
                raise _AllCaptured  # hooks are in forward order: nothing later is needed

        return capture

    try:
        with torch.no_grad():
            model.run_with_hooks(tokens.to(model.device), fwd_hooks=[(h, capturer(h)) for h in hooks],
                                 return_type=None)
    except _AllCaptured:
        pass
    return captured


def _select(act: np.ndarray, positions: list[int], policy: dict) -> np.ndarray:
    # act: [pos, *features] for one example
    if policy["policy"] == "mean":
        return act[positions].mean(axis=0, keepdims=True)
    return act[positions]


def _progress_bar(total_tokens: int, enabled: bool):
    if not enabled or total_tokens == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="caching activations")


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} PB"


# --- sinks: where rows go ----------------------------------------------------------------


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
        return ActivationStore(self.config, self.plan.meta, arrays, self.plan.tokens, None, True)


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
        _atomic_write(self.path / "meta.parquet", lambda f: self.plan.meta.to_parquet(f, index=False))
        _atomic_write(self.path / "tokens.parquet", lambda f: self.plan.tokens.to_parquet(f, index=False))
        manifest = {"format_version": FORMAT_VERSION, "config": self.config, "shards": [],
                    "complete": False, "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._save(manifest)
        return manifest

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
        _atomic_write(self.path / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))

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
            final = self.sink.path / "shards" / self.name
            if final.exists():  # a complete shard a killed run renamed but did not record
                shutil.rmtree(final)
            os.replace(self.tmp, final)
            _fsync_dir(final.parent)
        except OSError as err:
            raise _disk_error(self.sink.path, self.k, err) from err
        self.sink.shard_done({"index": self.k, "name": self.name, "start": self.start, "stop": self.stop})

    def abort(self) -> None:
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files = {}
        shutil.rmtree(self.tmp, ignore_errors=True)


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _disk_error(path: Path, k: int, err: OSError) -> StoreError:
    return StoreError(f"{path}: writing shard {k} failed ({err.strerror or err}); the store keeps "
                      f"shards 0..{k - 1} and opens up to them; rerun with the same arguments to "
                      f"resume from shard {k}")


def _atomic_write(target: Path, write) -> None:
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _difference_message(path: Path, old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    detail = "; ".join(f"{k}: stored {old.get(k)!r:.80} vs now {new.get(k)!r:.80}" for k in keys)
    return (f"{path}: holds a store made with different arguments ({detail}). Rerun with the "
            f"same arguments to resume it, or choose another path.")


def _versions() -> dict:
    import transformer_lens
    import transformers

    import workbench

    return {"workbench": workbench.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "transformer_lens": getattr(transformer_lens, "__version__", "?"),
            "numpy": np.__version__, "pandas": pd.__version__}

