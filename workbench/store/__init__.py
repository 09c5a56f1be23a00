"""Activation caching: in memory or streamed to disk, resumable, memory-mapped on read."""

from workbench.store.store import ActivationStore, ShardedArray, StoreError
from workbench.store.writer import cache_activations

__all__ = ["ActivationStore", "ShardedArray", "StoreError", "cache_activations"]
