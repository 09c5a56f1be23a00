"""Activation caching, data-parallel on Ray: one store, written by many workers.

The store is already cut into shards of ``shard_size`` examples, each computed independently
and committed by renaming its folder (``workbench/store/format.py``). Here the driver plans the
run and owns the manifest; each Ray task computes one shard on a model replica that stays
loaded in its worker process (:func:`~workbench.distributed.ray_cluster.worker_model`), writes
the shard's folder into the store, and returns its entry, which the driver records. The bytes of
a shard depend only on the plan, the model and the torch thread count, so the store equals a
single-process run with the same ``threads`` (a test compares them byte for byte). A task that
fails is retried (``max_retries``); a killed driver is resumed by rerunning the same call, which
skips the shards the manifest lists.

The store folder must be on a filesystem every worker can write (on one machine, any folder).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from workbench.distributed.ray_cluster import (
    ModelSpec,
    connect,
    load_model_spec,
    remote_task,
    require_ray,
    run_tasks,
    worker_model,
)
from workbench.store.format import DiskSink
from workbench.store.plan import prepare_cache
from workbench.store.store import MANIFEST, ActivationStore, StoreError
from workbench.store.writer import pending_shards, run_shard

_CACHE_OPTIONS = ("positions", "dtype", "batch_size", "text_column", "too_long", "shard_size")
_CACHE_DEFAULTS = {"positions": "last", "dtype": "float32", "batch_size": 16, "text_column": "text",
                   "too_long": "truncate", "shard_size": 4096}


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
    verify: bool = True,
    max_retries: int = 2,
    progress: bool = True,
    **cache_kwargs,
) -> ActivationStore:
    """:func:`~workbench.store.cache_activations` split across Ray workers; same store, same bytes.

    Args:
        model_source: what ``load_model`` loads in each worker (None: the embedded model).
        texts, hooks, cache_kwargs: as in ``cache_activations`` (``positions``, ``dtype`` (the
            store's), ``batch_size``, ``text_column``, ``too_long``, ``shard_size``).
            ``shard_size`` is the unit of work: use at least as many shards as workers.
        path: the store folder (required: workers write into it).
        workers: tasks running at once (one model replica each).
        address: ``"local"`` starts a private Ray instance on this machine for the call;
            anything else is passed to ``ray.init(address=...)`` (``"auto"``, ``"ray://host:10001"``).
        threads: torch threads per worker (and CPUs Ray reserves per task).
        device: the workers' device (``"cuda"``: one GPU per task).
        model_dtype: the model's dtype in the workers.
        verify: check the checkpoint's checklist when a worker loads it.
        max_retries: retries of a failed shard task.

    >>> store = cache_activations_ray(None, texts, "blocks.*.hook_resid_post", path="runs/acts",
    ...                               workers=2, shard_size=256)          # doctest: +SKIP
    """
    ray = require_ray()
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be at least 1")
    spec = ModelSpec(model_source, model_dtype, verify)
    options = {k: cache_kwargs.pop(k) for k in list(cache_kwargs) if k in _CACHE_OPTIONS}
    if cache_kwargs:
        raise TypeError(f"unknown arguments: {sorted(cache_kwargs)}")
    planner = load_model_spec(spec, "cpu")  # tokenizer and hook shapes for the plan
    plan, config = prepare_cache(planner, texts, hooks, **{**_CACHE_DEFAULTS, **options})
    del planner
    path = Path(path)
    sink = DiskSink(path, config, plan)
    todo = pending_shards(plan, config, sink)
    started = time.perf_counter()
    with connect(ray, address, num_cpus=workers * threads):
        task = remote_task(ray, _cache_shard, threads=threads, device=device, max_retries=max_retries)
        plan_ref, config_ref = ray.put(plan), ray.put(config)

        def submit(job):
            k, (start, stop) = job
            return task.remote(spec, device, threads, plan_ref, config_ref, str(path), k, start, stop)

        with tqdm(total=len(todo), desc=f"caching on {workers} Ray worker(s)", unit="shard",
                  disable=not progress) as bar:
            def on_done(job, entry: dict) -> None:
                sink.shard_done(entry)  # the driver alone writes the manifest
                bar.update()

            run_tasks(ray, todo, submit, workers, on_done)
    sink.finish()
    store = ActivationStore.open(path)
    if progress:
        elapsed = time.perf_counter() - started
        print(f"{len(todo)} shard(s) on {workers} worker(s) in {elapsed:.1f} s -> {path}")
    return store


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


def _cache_shard(spec: ModelSpec, device, threads, plan, config, path, k, start, stop) -> dict:
    """Ray task: compute shard ``k`` into the store at ``path``; returns its manifest entry."""
    import torch

    torch.set_num_threads(threads)  # a reused worker would otherwise keep its first setting
    sink = _ShardOnlySink(Path(path), config, plan)
    run_shard(worker_model(spec, device), plan, config, sink, k, start, stop)
    # Fault injection for the retry test: fail once after the shard's folder is renamed into
    # place but before the driver records it, the worst moment for a worker to die.
    if os.environ.get("WORKBENCH_TEST_FAIL_SHARD") == str(k):
        marker = Path(path) / f".failed-once-{k}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure after committing shard {k}")
    return sink.entries[0]
