"""Where benchmark and concept data live: one resolver for every part of the workbench.

The data directory is the ``data_dir`` argument, else ``$WORKBENCH_DATA``, else a per-user
folder (``$XDG_DATA_HOME/workbench/data``, by default ``~/.local/share/workbench/data``), where
``workbench data pull`` puts the published files.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.common.errors import MissingDataError

DATA_ENV = "WORKBENCH_DATA"


def user_data_dir() -> Path:
    """The per-user data folder: ``$XDG_DATA_HOME/workbench/data`` (``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "workbench" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None, *, needed_by: str | None = None) -> Path:
    """The data directory: ``data_dir`` > ``$WORKBENCH_DATA`` > :func:`user_data_dir`.

    Args:
        data_dir: an explicit folder.
        needed_by: what reads from it (``"concept 'toxicity'"``); when given, a folder that does
            not exist raises :class:`MissingDataError` saying where it was looked for and how to
            fill it.

    >>> resolve_data_dir("/data/benchmarks")
    PosixPath('/data/benchmarks')
    """
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser(), "the data_dir argument"
    elif os.environ.get(DATA_ENV):
        root, origin = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        root, origin = user_data_dir(), f"the per-user default (no data_dir argument, ${DATA_ENV} unset)"
    if needed_by is not None and not root.is_dir():
        raise MissingDataError(
            f"{needed_by} reads from the data directory, and {root} (from {origin}) does not exist. "
            f"Pass data_dir=... (--data-dir on the command line), set ${DATA_ENV}, or fetch the "
            f"published files with `workbench data pull`."
        )
    return root
