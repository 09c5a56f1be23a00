"""``cache_activations``: run a model over a dataset and stream chosen activations to a store.

The run is planned first (``plan.py``: tokens, stored positions, shards), then computed shard
by shard into a sink (``format.py``: in memory, or ``.npy`` shards on disk that a killed run
resumes from). Examples keep their input order in the store. Within a shard they are batched
longest-first, so padding stays small; sequences are right-padded, so with causal attention no
real token sees a pad, and pad positions are never stored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from workbench.common.memory import release_freed_memory
from workbench.models.hooks import HookSelection
from workbench.store.format import STORE_DTYPES, DiskSink, MemorySink
from workbench.store.plan import Plan, prepare_cache
from workbench.store.store import ActivationStore


def cache_activations(
    model,
    texts: Iterable[str | list[dict]] | pd.Series | pd.DataFrame,
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
            its other columns become metadata, e.g. labels), or any iterable of strings. A row
            may be a conversation (a list of ``{"role", "content"}`` dicts): it is rendered with
            the model's chat template and an open assistant turn (``model.chat_tokens``, one
            BOS), the store's ``text`` is the rendered text and a ``chat`` column marks it.
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
    release_freed_memory()  # what tokenising every text freed (see workbench.common.memory)
    _run(model, plan, config, sink, progress)
    return sink.store()


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
        release_freed_memory()  # a shard's transient batches: the job stays O(shard)
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
                positions = plan.stored_positions(example)
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
    ids = [plan.token_ids(i) for i in batch]
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for j, x in enumerate(ids):
        tokens[j, : len(x)] = torch.from_numpy(x.astype(np.int64))  # right padding: no real token attends to a pad
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
