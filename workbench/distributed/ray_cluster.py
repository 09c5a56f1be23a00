"""Ray plumbing shared by the runners: connecting, the per-worker model cache, a bounded task loop.

- :func:`connect`: a private local instance for one call, or an existing cluster.
- :class:`ModelSpec`, :func:`load_model_spec`, :func:`worker_model`: what a worker loads, and the
  one cache that keeps it loaded in the worker process for every later task (caching and eval
  tasks alike).
- :func:`remote_task`, :func:`run_tasks`: a task with the CPUs/GPU a worker needs, and at most
  ``workers`` of them in flight, cancelled if one fails.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from workbench.common.errors import WorkbenchError

INSTALL_HINT = "Ray is not installed: pip install 'workbench[distributed]' (or pip install 'ray>=2.60')"


def require_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise WorkbenchError(INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def connect(ray, address: str, num_cpus: int) -> Iterator[None]:
    """Use Ray for the duration of a ``with`` block.

    ``address="local"`` starts a private instance with ``num_cpus`` CPUs, no dashboard and a
    small object store, and shuts it down afterwards (only that instance: never ``ray stop``,
    which would stop every Ray process on the machine). Any other address connects to a
    running cluster (``"auto"``, ``"ray://head:10001"``); a cluster started with ``ray start``
    since Ray 2.6x uses token authentication, so set ``RAY_AUTH_MODE=token`` and the token as
    its documentation says. If this process is already connected, that connection is used.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield
        return
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 2**20,
                 log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as err:
            raise WorkbenchError(f"cannot reach a Ray cluster at {address!r}: {err}") from err
    try:
        yield
    finally:
        ray.shutdown()


class ModelSpec(NamedTuple):
    """What a worker passes to ``load_model``: small, picklable, and the cache's key.

    Attributes:
        source: the checkpoint (None: the embedded model).
        dtype: the model's dtype.
        verify: check the checkpoint's checklist while loading.
    """

    source: str | None
    dtype: str = "float32"
    verify: bool = True


# One model per (spec, device) in each worker process, reused by every task that process runs.
WORKER_MODELS: dict[tuple[ModelSpec, str | None], Any] = {}


def load_model_spec(spec: ModelSpec, device: str | None):
    """Load the model ``spec`` names on ``device`` (uncached: the driver's planning copy)."""
    from workbench.models.loading import load_model

    return load_model(spec.source, dtype=spec.dtype, device=device, verify=spec.verify)


def worker_model(spec: ModelSpec, device: str | None):
    """This worker process's replica of ``spec`` on ``device``, loaded on first use and then kept."""
    key = (spec, device)
    if key not in WORKER_MODELS:
        WORKER_MODELS[key] = load_model_spec(spec, device)
    return WORKER_MODELS[key]


def remote_task(ray, fn: Callable, *, threads: int, device: str | None, max_retries: int):
    """``fn`` as a Ray task reserving ``threads`` CPUs (and one GPU on a CUDA device), retried on error."""
    return ray.remote(fn).options(
        num_cpus=threads, num_gpus=1 if device and device.startswith("cuda") else 0,
        max_retries=max_retries, retry_exceptions=True,
    )


def run_tasks(ray, jobs: Iterable[Any], submit: Callable[[Any], Any], workers: int,
              on_done: Callable[[Any, Any], None]) -> None:
    """Run one task per job, at most ``workers`` at a time; ``on_done(job, result)`` as each finishes.

    Jobs start in order and finish in any order. A task whose retries are spent raises here (from
    ``ray.get``), and the tasks still running are cancelled so a failed run leaves no work behind.

    Args:
        ray: the ``ray`` module.
        jobs: what each task computes (passed back to ``on_done``).
        submit: starts the task for one job and returns its object reference.
        workers: tasks in flight at once (one model replica each).
        on_done: called in the driver with the job and its task's result.
    """
    queue, running = list(jobs), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                running[submit(job)] = job
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                on_done(running.pop(ref), ray.get(ref))
    finally:
        for ref in running:
            ray.cancel(ref)
