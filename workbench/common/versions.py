"""The package versions every manifest records (stores, eval runs, directions)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("workbench", "torch", "transformers", "transformer-lens", "numpy", "pandas", "pyarrow")


def versions() -> dict[str, str]:
    """``{"python": ..., package: version}`` for the packages results depend on (installed ones).

    >>> sorted(versions())[:2]                                       # doctest: +SKIP
    ['numpy', 'pandas']
    """
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out
