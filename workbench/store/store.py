"""Reading an activation store: memory-mapped ``.npy`` shards behind one array-like per hook.

On disk (see ``format.py`` for how it is written)::

    runs/acts/
      manifest.json          configuration + the list of complete shards (never a partial one),
                             each with its files' sizes and sha256 (see ``integrity.py``)
      meta.parquet           one row per example: example_id, text, n_tokens, row_start, row_stop, ...
      tokens.parquet         token ids and str tokens of every example
      shards/00000/<hook>.npy   rows of the shard's examples, in input order

A hook's activations are a :class:`ShardedArray`: ``shape`` ``(n_rows, *features)``, indexing
reads only the shards it touches, and each shard is a copy-on-write ``np.memmap`` (edits stay
in memory, the files never change) that converts to torch without a copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from workbench.common.errors import WorkbenchError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class StoreError(WorkbenchError):
    """An activation store is missing, incomplete where it must not be, or was asked for
    something it does not hold."""


class ShardedArray:
    """Concatenation of per-shard arrays along axis 0, without copying them.

    ``X[i]``, ``X[a:b]``, ``X[[i, j]]`` and boolean masks return numpy arrays read from the
    shards involved; ``np.asarray(X)`` reads everything. ``X.parts`` are the shards themselves
    (memory maps), ``X.torch_parts()`` the same as zero-copy tensors.

    >>> X = ShardedArray([np.zeros((2, 3)), np.ones((1, 3))])
    >>> X.shape, X[1:3].tolist()
    ((3, 3), [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    """

    def __init__(self, parts: list[np.ndarray], dtype: np.dtype | None = None, features: tuple = ()):
        self.parts = parts
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = np.dtype(dtype) if dtype is not None else parts[0].dtype
        self._features = tuple(parts[0].shape[1:]) if parts else tuple(features)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self._features)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.parts) if self.parts else np.empty(self.shape, self.dtype)
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __getitem__(self, index):
        if isinstance(index, tuple):
            rows, rest = index[0], index[1:]
            return self[rows][(slice(None), *rest) if not np.isscalar(rows) else rest]
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            part = int(np.searchsorted(self._starts, i, side="right") - 1)
            return np.array(self.parts[part][i - self._starts[part]])
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._take_range(start, stop)
            index = np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} rows")
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(index), *self._features), self.dtype)
        part_of = np.searchsorted(self._starts, index, side="right") - 1
        for part in np.unique(part_of):
            chosen = part_of == part
            out[chosen] = self.parts[part][index[chosen] - self._starts[part]]
        return out

    def _take_range(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for part, array in enumerate(self.parts):
            lo, hi = max(start, self._starts[part]), min(stop, self._starts[part + 1])
            if lo < hi:
                pieces.append(array[lo - self._starts[part] : hi - self._starts[part]])
        if not pieces:
            return np.empty((0, *self._features), self.dtype)
        return np.array(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces)

    def torch_parts(self) -> list[torch.Tensor]:
        """Each shard as a torch tensor sharing memory with the memory map (no copy)."""
        return [torch.from_numpy(p) for p in self.parts]

    def torch(self) -> torch.Tensor:
        """The whole array as one tensor: zero-copy with one shard, a concatenation otherwise."""
        parts = self.torch_parts()
        return parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.from_numpy(np.asarray(self))

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.parts)})"


@dataclass
class ActivationStore:
    """Activations of chosen hooks over a dataset, on disk or in memory, with per-example meta.

    Attributes:
        config: what was cached and how (model identity, hooks, positions, dtype, data hash ...).
        meta: one row per *complete* example: ``example_id``, ``text``, ``n_tokens``,
            ``row_start``/``row_stop`` (its rows in each hook's array), plus any columns passed in.
        path: the store folder, or None for an in-memory store.
        complete: False while a caching job is unfinished (only complete shards are visible).

    >>> store = wb.ActivationStore.open("runs/acts-demo")             # doctest: +SKIP
    >>> X = store["blocks.12.hook_resid_post"]                          # doctest: +SKIP
    >>> X.shape                                                         # doctest: +SKIP
    (1000, 576)
    """

    config: dict
    meta: pd.DataFrame
    arrays: dict[str, ShardedArray]
    tokens_frame: pd.DataFrame | None  # None: read from ``path`` when first asked for
    path: Path | None = None
    complete: bool = True

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a store folder; an unfinished one opens up to its last complete shard.

        Raises:
            StoreError: not a store, or a shard file is missing or has the wrong size (the
                message names the shard and hook and how to recover).
        """
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise StoreError(f"{path}: not an activation store (no {MANIFEST})")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{manifest_file}: unknown store format {manifest.get('format_version')!r}")
        config = manifest["config"]
        meta = pd.read_parquet(path / "meta.parquet")
        shards = _complete_prefix(manifest["shards"])
        done = np.zeros(len(meta), dtype=bool)
        for shard in shards:
            done[shard["start"] : shard["stop"]] = True
        arrays = {
            hook: ShardedArray(parts, np.dtype(config["dtype"]), tuple(config["hook_features"][hook]))
            for hook, parts in _map_shards(path, config, meta, shards).items()
        }
        # Token lists (~100 bytes a token as pandas objects) are read on first use, so opening
        # a store, or the store a caching job returns, costs no memory per token.
        return cls(config, meta[done].reset_index(drop=True), arrays, None, path, complete=manifest["complete"])

    # --- access ---------------------------------------------------------------------------

    @property
    def token_table(self) -> pd.DataFrame:
        """token_ids, str_tokens and stored_positions of every visible example."""
        if self.tokens_frame is None:
            table = pd.read_parquet(self.path / "tokens.parquet")
            # Visible examples are a prefix (shards complete in order).
            self.tokens_frame = table.iloc[: len(self.meta)].reset_index(drop=True)
        return self.tokens_frame

    @property
    def hooks(self) -> list[str]:
        return list(self.arrays)

    def __getitem__(self, hook: str) -> ShardedArray:
        if hook not in self.arrays:
            import difflib

            close = difflib.get_close_matches(hook, self.hooks, n=3)
            raise KeyError(f"{hook!r} is not in this store (hooks: {len(self.hooks)}); closest: {close}")
        return self.arrays[hook]

    def __contains__(self, hook: str) -> bool:
        return hook in self.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        """Number of examples held."""
        return len(self.meta)

    def torch(self, hook: str) -> torch.Tensor:
        """A hook's activations as a tensor (zero-copy when the store has one shard)."""
        return self[hook].torch()

    def example(self, hook: str, i: int) -> np.ndarray:
        """Example ``i``'s rows of a hook: ``(n_positions, *features)`` for ``"all"`` and
        slice policies, ``(*features,)`` otherwise."""
        row = self.meta.iloc[i]
        if self.config["positions"]["per_token"]:
            return self[hook][int(row.row_start) : int(row.row_stop)]
        return self[hook][int(row.row_start)]

    def tokens(self, i: int) -> list[str]:
        """The str tokens of example ``i`` (BOS included), aligned with ``example(hook, i)`` rows
        for ``positions="all"``."""
        return list(self.token_table.iloc[i]["str_tokens"])

    def token_ids(self, i: int) -> list[int]:
        return [int(t) for t in self.token_table.iloc[i]["token_ids"]]

    def positions_of(self, i: int) -> list[int]:
        """Token positions of example ``i`` whose activations were stored."""
        return [int(p) for p in self.token_table.iloc[i]["stored_positions"]]

    def to_activation_cache(self, model, i: int):
        """Example ``i`` as a TransformerLens ``ActivationCache`` (``[1, pos, ...]`` per hook).

        Needs ``positions="all"``, since TL utilities expect every position.
        """
        from transformer_lens.ActivationCache import ActivationCache

        if self.config["positions"]["policy"] != "all":
            raise StoreError("to_activation_cache needs a store cached with positions='all'")
        cache = {h: torch.from_numpy(self.example(h, i)).unsqueeze(0) for h in self.hooks}
        return ActivationCache(cache, model.bridge if hasattr(model, "bridge") else model)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        state = "" if self.complete else ", INCOMPLETE"
        return (f"ActivationStore({where}, examples={len(self)}, hooks={len(self.hooks)}, "
                f"positions={self.config['positions']['policy']!r}, dtype={self.config['dtype']}{state})")


def _map_shards(path: Path, config: dict, meta: pd.DataFrame, shards: list[dict]) -> dict[str, list[np.ndarray]]:
    # Sizes first (one stat per file): a truncated or missing file is named with its shard and
    # hook here, instead of failing later deep inside numpy.
    from workbench.store.integrity import damage_message, size_problem

    damaged, parts = [], {hook: [] for hook in config["hook_features"]}
    for shard in shards:
        rows = int(meta["row_stop"].iloc[shard["stop"] - 1]) - int(meta["row_start"].iloc[shard["start"]])
        for hook, features in config["hook_features"].items():
            file = path / "shards" / shard["name"] / f"{hook}.npy"
            problem = size_problem(file, shard, hook)
            if problem is None:
                try:
                    part = np.load(file, mmap_mode="c")
                except (ValueError, OSError) as err:
                    problem = f"unreadable ({err})"
                else:
                    if part.shape != (rows, *features) or part.dtype != np.dtype(config["dtype"]):
                        problem = f"holds {part.dtype}{list(part.shape)}, expected {config['dtype']}{[rows, *features]}"
            if problem is None:
                parts[hook].append(part)
            else:
                damaged.append((shard, hook, problem))
    if damaged:
        raise StoreError(damage_message(path, damaged))
    return parts


def _complete_prefix(shards: list[dict]) -> list[dict]:
    # Rows are numbered as if every earlier shard exists, so only a gap-free run from shard 0
    # can be shown (shards written out of order by parallel workers wait for the gap to fill).
    by_index = {s["index"]: s for s in shards}
    prefix = []
    while len(prefix) in by_index:
        prefix.append(by_index[len(prefix)])
    return prefix
