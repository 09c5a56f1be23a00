"""Planning a cache run: the inputs checked, every text tokenised, its stored positions chosen.

A :class:`Plan` is what a store will hold before any activation is computed: per example its
token ids, the positions whose activations are kept and the rows they take in each hook's
array. It is cut into shards of ``shard_size`` examples, the unit of work and of resumption.
``prepare_cache`` also builds the run's configuration, which the manifest records and a
resumed run must match.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workbench.models.chat import is_conversation
from workbench.models.hooks import HookSelection, named_dims, select_hooks
from workbench.store.format import STORE_DTYPES


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


TOKEN_BATCH_TOKENS = 1 << 16  # tokens (whole examples) per row group of tokens.parquet


@dataclass
class Plan:
    """What will be stored: per-example token ids, stored positions and row ranges.

    Token ids and stored positions are flat ``int32`` arrays with per-example offsets, and str
    tokens are not held at all (only the decoded piece of each vocabulary id seen): a plan costs
    about 8 bytes a token instead of the ~100 of Python lists, so a job's memory beyond its
    current shard stays small at dataset scale.
    """

    meta: pd.DataFrame  # example_id, text, n_tokens, row_start, row_stop, + user columns
    ids: np.ndarray  # all examples' token ids, concatenated
    id_offsets: np.ndarray  # example i's ids are ids[id_offsets[i]:id_offsets[i + 1]]
    positions: np.ndarray  # stored positions, concatenated
    position_offsets: np.ndarray
    pieces: dict[int, str]  # the str token of every id in ``ids``

    def shards(self, shard_size: int) -> list[tuple[int, int]]:
        n = len(self.meta)
        return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]

    def token_ids(self, i: int) -> np.ndarray:
        return self.ids[self.id_offsets[i] : self.id_offsets[i + 1]]

    def stored_positions(self, i: int) -> np.ndarray:
        return self.positions[self.position_offsets[i] : self.position_offsets[i + 1]]

    def token_arrow(self):
        """The ``tokens.parquet`` table (token_ids, str_tokens, stored_positions) of every example."""
        import pyarrow as pa

        return pa.Table.from_batches(list(self.token_batches()), schema=token_schema())

    def token_batches(self, tokens_per_batch: int | None = None):
        """The token table in record batches of about ``tokens_per_batch`` tokens (whole
        examples), built from the flat arrays one batch at a time: writing the table costs
        memory for one batch (about 40 bytes a token), not for the dataset."""
        import pyarrow as pa

        vocab = np.array(sorted(self.pieces), dtype=np.int64)
        lookup = np.zeros(int(vocab.max()) + 1 if len(vocab) else 1, dtype=np.int64)
        lookup[vocab] = np.arange(len(vocab))
        strings = pa.array([self.pieces[int(i)] for i in vocab], type=pa.string())
        schema = token_schema()
        budget = tokens_per_batch or TOKEN_BATCH_TOKENS
        n = len(self.meta)
        a = 0
        while a < n:
            # whole examples up to the budget (at least one)
            b = max(a + 1, int(np.searchsorted(self.id_offsets, self.id_offsets[a] + budget, side="right")) - 1)
            b = min(b, n)
            lo, hi = self.id_offsets[a], self.id_offsets[b]
            ids = self.ids[lo:hi]
            offsets = pa.array((self.id_offsets[a : b + 1] - lo).astype(np.int32))
            p_lo, p_hi = self.position_offsets[a], self.position_offsets[b]
            p_offsets = pa.array((self.position_offsets[a : b + 1] - p_lo).astype(np.int32))
            yield pa.record_batch([
                pa.ListArray.from_arrays(offsets, pa.array(ids.astype(np.int64))),
                pa.ListArray.from_arrays(offsets, strings.take(pa.array(lookup[ids]))),
                pa.ListArray.from_arrays(p_offsets, pa.array(self.positions[p_lo:p_hi].astype(np.int64))),
            ], schema=schema)
            a = b

    def tokens_frame(self) -> pd.DataFrame:
        """The token table as pandas (what an in-memory store holds)."""
        return self.token_arrow().to_pandas()


def token_schema():
    """The token table's arrow schema, with the pandas metadata ``DataFrame.to_parquet(index=False)``
    records (it depends on the columns' types only, so a one-row frame of the same types gives it):
    the table reads back as the pandas frame of lists it replaces."""
    import pyarrow as pa

    sample = pd.DataFrame({"token_ids": [[0]], "str_tokens": [["a"]], "stored_positions": [[0]]})
    return pa.Schema.from_pandas(sample, preserve_index=False)


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
    elif is_conversation(texts):
        raise TypeError("texts is one conversation (a list of message dicts); wrap it in a list: [conversation]")
    else:
        frame = pd.DataFrame({"text": pd.Series(list(texts), dtype=object)})
    if frame.empty:
        raise ValueError("texts is empty: nothing to cache")
    for row, text in enumerate(frame["text"]):
        if not isinstance(text, str) and not is_conversation(text):
            raise TypeError(f"texts row {row} is {type(text).__name__} ({text!r:.60}), neither a string nor "
                            "a conversation (a list of {'role', 'content'} dicts)")
    reserved = {"example_id", "n_tokens", "row_start", "row_stop", "chat"} & set(frame.columns)
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
        features[name] = tuple(sizes[d] if d in sizes else int(d) for d in dims[2:])  # an SAE's latents: a number
    return names, features


def _dim_sizes(model) -> dict[str, int]:
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
    # Two growing buffers, not one small array per example: thousands of small survivors
    # interleaved with each text's transient tokenizer objects would pin heap pages that are
    # never handed back, so the plan's memory would grow with the dataset beyond its 8 bytes
    # a token.
    ids_buffer, positions_buffer, truncated = _Int32Buffer(), _Int32Buffer(), []
    n_tokens = np.zeros(len(frame), dtype=np.int64)
    n_stored = np.zeros(len(frame), dtype=np.int64)
    decoded: dict[int, str] = {}
    tok = model.tokenizer
    texts = list(frame["text"])
    chat = [is_conversation(text) for text in texts]
    for row, text in enumerate(texts):
        if chat[row]:  # rendered with the chat template, one BOS: the store keeps what the model saw
            ids = model.chat_tokens(text)[0].cpu().numpy()
            texts[row] = model.format_chat(text)
        else:
            ids = model.to_tokens(text, truncate=False, move_to_device=False)[0].numpy()
        if len(ids) > n_ctx:
            if too_long == "error":
                raise ValueError(f"texts row {row} has {len(ids)} tokens, more than the context window ({n_ctx})")
            truncated.append(row)
            ids = ids[:n_ctx]
        ids_buffer.extend(ids)
        n_tokens[row] = len(ids)
        n_stored[row] = positions_buffer.extend(_stored_positions(policy, len(ids), frame, row))
        missing = [int(i) for i in np.unique(ids) if int(i) not in decoded]
        if missing:  # decoded once per vocabulary id, not once per token
            pieces = tok.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)
            decoded.update(zip(missing, pieces, strict=True))
    if truncated:
        warnings.warn(f"{len(truncated)} texts longer than the context window ({n_ctx} tokens) were "
                      f"truncated (rows {truncated[:10]}{' ...' if len(truncated) > 10 else ''})", stacklevel=3)
    n_rows = n_stored if policy["per_token"] else np.ones(len(frame), dtype=np.int64)
    stops = np.cumsum(n_rows)
    meta = pd.DataFrame({"example_id": np.arange(len(frame)), "text": texts,
                         "n_tokens": n_tokens, "row_start": stops - n_rows, "row_stop": stops})
    if any(chat):
        meta["chat"] = chat  # the text is the rendered conversation
    extra = frame.drop(columns=["text"])
    meta = pd.concat([meta, extra.reset_index(drop=True)], axis=1)
    return Plan(meta, ids_buffer.array(), _offsets(n_tokens), positions_buffer.array(),
                _offsets(n_stored), decoded)


class _Int32Buffer:
    """An int32 array grown by doubling: appends cost amortised O(1), and one allocation
    holds everything appended."""

    def __init__(self, capacity: int = 1 << 16):
        self._data, self._n = np.empty(capacity, dtype=np.int32), 0

    def extend(self, values) -> int:
        values = np.asarray(values, dtype=np.int32)
        if self._n + len(values) > len(self._data):
            grown = np.empty(max(2 * len(self._data), self._n + len(values)), dtype=np.int32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : self._n + len(values)] = values
        self._n += len(values)
        return len(values)

    def array(self) -> np.ndarray:
        return self._data[: self._n].copy()


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


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


def _data_hash(frame: pd.DataFrame, rows_per_chunk: int = 4096) -> str:
    """sha256 of the frame as JSON lines, hashed a chunk of rows at a time (the JSON of a whole
    dataset is never built): the same digest as hashing ``frame.to_json(orient="records",
    lines=True)`` in one piece, which is what stores record."""
    h = hashlib.sha256()
    for start in range(0, len(frame), rows_per_chunk):
        chunk = frame.iloc[start : start + rows_per_chunk]
        text = chunk.to_json(orient="records", lines=True, default_handler=str)
        if start + rows_per_chunk < len(frame) and not text.endswith("\n"):
            text += "\n"  # pandas versions that end the lines without a final newline
        h.update(text.encode())
    return h.hexdigest()
