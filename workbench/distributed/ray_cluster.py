"""Connecting to Ray: a private local instance for one call, or an existing cluster."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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
