"""Activation caching, data-parallel on Ray: one store, written by many workers.

The store is already cut into shards of ``shard_size`` examples, each computed independently
and committed by renaming its folder (``workbench/store/writer.py``). Here the driver plans the
run and owns the manifest; each Ray task computes one shard on a model replica that stays
loaded in its worker process, writes the shard's folder into the store, and returns its entry,
which the driver records. The bytes of a shard depend only on the plan, the model and the
torch thread count, so the store equals a single-process run with the same ``threads`` (a test
compares them byte for byte). A task that fails is retried (``max_retries``); a killed driver
is resumed by rerunning the same call, which skips the shards the manifest lists.

The store folder must be on a filesystem every worker can write (on one machine, any folder).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from workbench.distributed.ray_cluster import connect, require_ray
from workbench.store.store import MANIFEST, ActivationStore, StoreError
from workbench.store.writer import DiskSink, pending_shards, prepare_cache, run_shard

# One model per worker process, reused by every task that process runs.
_WORKER_MODELS: dict[tuple, Any] = {}


def cache_activations_ray(
    model_source: str | None,
    texts,
    hooks="blocks.*.hook_resid_post",
    *,
    path: str | Path,
    workers: int = 2,
    address: str = "local",
    threads: int = 1,
    device: str | None = None,
    model_dtype: str = "float32",
    max_retries: int = 2,
    progress: bool = True,
    **cache_kwargs,
) -> ActivationStore:
    """:func:`~workbench.cache_activations` split across Ray workers; same store, same bytes.

    Args:
        model_source: what ``wb.load_model`` loads in each worker (None: the embedded model).
        texts, hooks, cache_kwargs: as in ``cache_activations`` (``positions``, ``dtype``,
            ``batch_size``, ``text_column``, ``too_long``, ``shard_size``). ``shard_size`` is the
            unit of work: use at least as many shards as workers.
        path: the store folder (required: workers write into it).
        workers: tasks running at once (one model replica each).
        address: ``"local"`` starts a private Ray instance on this machine for the call;
            anything else is passed to ``ray.init(address=...)`` (``"auto"``, ``"ray://host:10001"``).
        threads: torch threads per worker (and CPUs Ray reserves per task).
        device: the workers' device (``"cuda"``: one GPU per task).
        max_retries: retries of a failed shard task.

    >>> store = cache_activations_ray(None, texts, "blocks.*.hook_resid_post", path="runs/acts",
    ...                               workers=2, shard_size=256)          # doctest: +SKIP
    """
    ray = require_ray()
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be at least 1")
    spec = (model_source, model_dtype)
    planner = _load_model(spec, "cpu")  # tokenizer and hook shapes for the plan
    options = {k: cache_kwargs.pop(k) for k in list(cache_kwargs) if k in _CACHE_OPTIONS}
    if cache_kwargs:
        raise TypeError(f"unknown arguments: {sorted(cache_kwargs)}")
    defaults = {"positions": "last", "dtype": "float32", "batch_size": 16, "text_column": "text",
                "too_long": "truncate", "shard_size": 4096}
    plan, config = prepare_cache(planner, texts, hooks, **{**defaults, **options})
    path = Path(path)
    sink = DiskSink(path, config, plan)
    todo = pending_shards(plan, config, sink)
    del planner
    started = time.perf_counter()
    with connect(ray, address, num_cpus=workers * threads):
        task = ray.remote(_cache_shard).options(
            num_cpus=threads, num_gpus=1 if device and device.startswith("cuda") else 0,
            max_retries=max_retries, retry_exceptions=True,
        )
        plan_ref, config_ref = ray.put(plan), ray.put(config)
        bar = tqdm(total=len(todo), desc=f"caching on {workers} Ray worker(s)", unit="shard", disable=not progress)
        queue, running = list(todo), {}
        try:
            while queue or running:
                while queue and len(running) < workers:
                    k, (start, stop) = queue.pop(0)
                    ref = task.remote(spec, device, threads, plan_ref, config_ref, str(path), k, start, stop)
                    running[ref] = k
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    running.pop(ref)
                    sink.shard_done(ray.get(ref))  # raises the task's error once retries are spent
                    bar.update()
        finally:
            bar.close()
            for ref in running:
                ray.cancel(ref)
    sink.finish()
    store = ActivationStore.open(path)
    if progress:
        elapsed = time.perf_counter() - started
        print(f"{len(todo)} shard(s) on {workers} worker(s) in {elapsed:.1f} s -> {path}")
    return store


_CACHE_OPTIONS = ("positions", "dtype", "batch_size", "text_column", "too_long", "shard_size")


class _ShardOnlySink(DiskSink):
    """A worker's view of the store: writes shard folders, leaves the manifest to the driver."""

    def __init__(self, path: Path, config: dict, plan):
        self.path, self.config, self.plan = path, config, plan
        self.bytes_written = 0
        self.entries: list[dict] = []
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("config") != config:
            raise StoreError(f"{path}: the store's configuration changed under a running worker")
        self.manifest = manifest

    def shard_done(self, entry: dict) -> None:
        self.entries.append(entry)


def _load_model(spec: tuple, device: str | None):
    import workbench as wb

    source, dtype = spec
    return wb.load_model(source, dtype=dtype, device=device)


def _cache_shard(spec, device, threads, plan, config, path, k, start, stop) -> dict:
    """Ray task: compute shard ``k`` into the store at ``path``; returns its manifest entry."""
    import torch

    torch.set_num_threads(threads)  # a reused worker would otherwise keep its first setting
    key = (spec, device)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = _load_model(spec, device)
    sink = _ShardOnlySink(Path(path), config, plan)
    run_shard(_WORKER_MODELS[key], plan, config, sink, k, start, stop)
    # Fault injection for the retry test: fail once after the shard's folder is renamed into
    # place but before the driver records it, the worst moment for a worker to die.
    if os.environ.get("WORKBENCH_TEST_FAIL_SHARD") == str(k):
        marker = Path(path) / f".failed-once-{k}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure after committing shard {k}")
    return sink.entries[0]
