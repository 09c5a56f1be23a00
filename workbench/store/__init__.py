"""Activation caching: in memory or streamed to disk, resumable, memory-mapped on read.

``writer.py`` (:func:`cache_activations`: running the model), ``plan.py`` (tokenising,
positions, shards), ``format.py`` (the on-disk format and the sinks that write it) and
``store.py`` (:class:`ActivationStore`: reading) and ``integrity.py`` (sizes and checksums:
:func:`verify_store`, :func:`repair_store`).
"""

from workbench.store.integrity import StoreReport, repair_store, verify_store
from workbench.store.store import ActivationStore, ShardedArray, StoreError
from workbench.store.writer import cache_activations

__all__ = ["ActivationStore", "ShardedArray", "StoreError", "StoreReport", "cache_activations", "repair_store",
           "verify_store"]
