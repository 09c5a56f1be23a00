"""Ray plumbing shared by the runners: connecting, the per-worker model cache, a bounded task loop.

- :func:`connect`: a private local instance for one call (loopback only, token-protected), or
  an existing cluster (:func:`check_cluster_auth` warns when it is remote and no token is set).
- :class:`ModelSpec`, :func:`load_model_spec`, :func:`worker_model`: what a worker loads, and the
  one cache that keeps it loaded in the worker process for every later task (caching and eval
  tasks alike).
- :func:`remote_task`, :func:`run_tasks`: a task with the CPUs/GPU a worker needs, and at most
  ``workers`` of them in flight, cancelled if one fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import warnings
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


# Every listener of a private instance binds here: the node's IP is what Ray's gRPC servers, agents
# and metrics exporters bind to, and loopback keeps the instance unreachable from the network.
LOOPBACK = "127.0.0.1"
TOKEN_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


@contextlib.contextmanager
def connect(ray, address: str, num_cpus: int) -> Iterator[None]:
    """Use Ray for the duration of a ``with`` block.

    ``address="local"`` starts a private instance with ``num_cpus`` CPUs, no dashboard and a
    small object store, reachable from this machine only: its node IP is 127.0.0.1, so the GCS,
    the raylet, the object manager, the workers and the agents all listen on loopback, and every
    request must carry a fresh random token (``RAY_AUTH_MODE=token``, the token held in this
    process's environment and never written to disk). It is shut down afterwards (only that
    instance: never ``ray stop``, which would stop every Ray process on the machine).

    Any other address connects to a running cluster (``"auto"``, ``"HEAD:6379"``,
    ``"ray://HEAD:10001"``). Such a cluster should use token authentication (``ray start`` does
    by default since Ray 2.6x): give this process the cluster's token as ``RAY_AUTH_TOKEN``, in
    the file ``RAY_AUTH_TOKEN_PATH`` names, or in ``~/.ray/auth_token``. Connecting to an address
    that is not loopback with no token configured warns (:func:`check_cluster_auth`); a cluster
    that asks for a token this process lacks is a :class:`WorkbenchError` saying how to set it.
    If this process is already connected, that connection is used.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        yield
        return
    if address == "local":
        with _private_instance(ray, num_cpus):
            yield
        return
    check_cluster_auth(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        if _auth_refused(ray, err):
            raise WorkbenchError(
                f"the Ray cluster at {address!r} wants a token this process does not have (or a different "
                "one): set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, to the cluster's "
                f"token ({TOKEN_DOCS})") from err
        raise WorkbenchError(f"cannot reach a Ray cluster at {address!r}: {err}") from err
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _private_instance(ray, num_cpus: int) -> Iterator[None]:
    """Start a loopback-only, token-protected Ray instance; shut it down (and forget its token) after."""
    from ray._private import ray_constants  # private, checked below: the node-IP switch lives there

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           # Read by every Ray process at import: with it off, "127.0.0.1" stays the node IP
           # instead of being replaced by this machine's network address (which would make every
           # listener bind to all interfaces).
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise WorkbenchError(f"this Ray ({ray.__version__}) has no loopback-only mode workbench knows; "
                             "install the version pyproject.toml names, or use a cluster (--ray ADDRESS)")
    try:
        with _environment(env):
            _reload_auth_config()
            saved, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, dashboard_host=LOOPBACK,
                         _node_ip_address=LOOPBACK, object_store_memory=256 * 2**20,
                         log_to_driver=False, configure_logging=False)
            finally:
                ray_constants.ENABLE_RAY_CLUSTER = saved
            try:
                node_ip = ray.util.get_node_ip_address()
                if node_ip != LOOPBACK:
                    raise WorkbenchError(f"the local Ray instance came up on {node_ip}, not {LOOPBACK}: "
                                         "refusing to run it open to the network")
                yield
            finally:
                ray.shutdown()
    finally:
        _reload_auth_config()  # forget the instance's token and mode once the variables are restored


def _auth_refused(ray, err: BaseException | None) -> bool:
    """Whether a failed ``ray.init`` was the cluster refusing this process's token.

    Ray raises ``ConnectionError`` from a ``RuntimeError`` that carries the GCS client's
    ``AuthenticationError`` only as text, so both the chain and the messages are looked at.
    """
    while err is not None:
        if isinstance(err, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a ``with`` block (Ray's child processes inherit them), then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _reload_auth_config() -> None:
    """Make Ray's C++ core re-read ``RAY_AUTH_MODE`` and the token (it caches both per process)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``, a bare host) names this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit("@", 1)[-1]
    if host.startswith("["):  # [::1]:6379
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_configured() -> bool:
    """Whether this process has a Ray token: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``'s file, or ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def check_cluster_auth(address: str) -> None:
    """Warn before connecting to a cluster that is reachable over the network without a token.

    ``"auto"`` (the cluster ``ray start`` left on this machine, which listens on its network
    address) counts as remote. A warning rather than an error: a cluster on a private network may
    be unauthenticated on purpose, and Ray itself refuses a token-protected cluster without one.
    """
    if is_loopback_address(address):
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        problem = "RAY_AUTH_MODE=disabled is set"
    elif not token_configured():
        problem = "no Ray token is configured (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    else:
        return
    warnings.warn(f"connecting to the Ray cluster at {address!r} although {problem}: if the cluster runs "
                  "without token authentication, anyone who can reach it can run code on it. Start it "
                  f"with token authentication and give this process its token ({TOKEN_DOCS}).", stacklevel=3)


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
