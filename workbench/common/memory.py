"""Handing freed heap memory back to the operating system.

A long job that allocates and frees many small transient objects (a tokenizer's outputs per
text, a forward pass's activations per batch) leaves the C heap fragmented: the memory is free
to the process but still counted in its resident size, which then grows with the dataset.
``release_freed_memory`` asks glibc to return it (``malloc_trim``) and arrow to drop its
cached blocks; elsewhere (macOS, musl) it does what it can and never fails.

>>> release_freed_memory()  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) and arrow's unused blocks."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
