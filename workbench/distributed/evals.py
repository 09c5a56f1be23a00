"""Eval suites, data-parallel on Ray: examples scored in chunks by model replicas on workers.

The driver does everything :func:`~workbench.evals.run_eval` does (data loading, the seeded
subset, metrics with bootstrap CIs, the manifest, saving) and hands only the scoring of the
examples to Ray: the examples are cut into contiguous chunks, each scored by a task on a worker
that keeps its model loaded (:func:`~workbench.distributed.ray_cluster.worker_model`), and the
per-example rows are put back in order. Metrics are then computed once, by the driver, on all
rows, so they are those of a single-process run on the same per-example scores. Scores
themselves can differ from a single-process run in the last bits of a float: chunks form other
padded batches than one process does. Failed tasks are retried.

The toxicity suite (sampled generations) is not distributed yet: under Ray it runs in the driver.
Steering contexts on the driver's model do not reach the workers' replicas, so a Ray run refuses
a model with open interventions.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from workbench.common.errors import WorkbenchError
from workbench.distributed.ray_cluster import (
    ModelSpec,
    connect,
    load_model_spec,
    remote_task,
    require_ray,
    run_tasks,
    worker_model,
)


def run_suite_ray(
    model_source: str | None,
    name: str = "quick",
    *,
    address: str = "local",
    workers: int = 2,
    threads: int = 1,
    device: str | None = None,
    model_dtype: str = "float32",
    verify: bool = True,
    chunk_size: int = 64,
    max_retries: int = 2,
    model: Any = None,
    **run_suite_kwargs,
):
    """:func:`~workbench.evals.run_suite` (a group or one suite) with scoring on Ray workers.

    Args:
        model_source: what ``load_model`` loads on each worker (None: the embedded model).
        name: a group (``safety``, ``quick``) or a suite name.
        address, workers, threads, device, model_dtype, verify: as in ``cache_activations_ray``.
        chunk_size: examples per task.
        model: the driver's copy of the model (loaded from ``model_source`` when not given);
            it names the model in manifests and scores nothing.
        run_suite_kwargs: ``data_dir``, ``limit``, ``seed``, ``errors``, ``out``, ``progress``,
            ``on_result``, ``suite_params``.

    >>> suite = run_suite_ray(None, "quick", workers=2, out="runs/quick")      # doctest: +SKIP
    """
    from workbench.evals import run_suite

    ray = require_ray()
    if workers < 1 or threads < 1 or chunk_size < 1:
        raise ValueError("workers, threads and chunk_size must be at least 1")
    spec_key = ModelSpec(model_source, model_dtype, verify)
    driver_model = model if model is not None else load_model_spec(spec_key, "cpu")
    if driver_model.active_interventions():
        raise WorkbenchError("Ray workers cannot see steering/ablation contexts opened on this process's model; "
                             "run the eval in-process (without --ray) to evaluate under interventions")

    with connect(ray, address, num_cpus=workers * threads):
        task = remote_task(ray, _score_chunk, threads=threads, device=device, max_retries=max_retries)

        def score_on_ray(model, spec, examples: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
            chunks = [examples.iloc[a:b] for a, b in chunk_bounds(len(examples), chunk_size)]
            parts: dict[int, pd.DataFrame] = {}
            with tqdm(total=len(examples), desc=f"{spec.name} on {workers} Ray worker(s)",
                      disable=not progress) as bar:
                def on_done(i: int, rows: pd.DataFrame) -> None:
                    parts[i] = rows
                    bar.update(len(chunks[i]))

                run_tasks(ray, range(len(chunks)),
                          lambda i: task.remote(spec_key, device, threads, spec, chunks[i]), workers, on_done)
            samples = pd.concat([parts[i] for i in range(len(chunks))], ignore_index=True)
            if samples["example_id"].tolist() != examples["example_id"].tolist():
                raise RuntimeError("Ray scoring returned rows out of order or incomplete")
            return samples

        return run_suite(driver_model, name, score_examples=score_on_ray, **run_suite_kwargs)


def _score_chunk(spec_key: ModelSpec, device, threads, spec, examples: pd.DataFrame) -> pd.DataFrame:
    """Ray task: score a chunk of examples on this worker's model replica."""
    import torch

    from workbench.evals.scoring import score

    torch.set_num_threads(threads)
    return score(worker_model(spec_key, device), spec, examples.reset_index(drop=True), progress=False)


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of consecutive chunks covering ``n`` examples.

    >>> chunk_bounds(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
