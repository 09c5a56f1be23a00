"""Past one machine: data-parallel caching and eval suites on Ray (an optional extra: ``workbench[distributed]``).

- :func:`cache_activations_ray`: one activation store, its shards computed by Ray workers.
- :func:`run_suite_ray`: eval suites with the examples scored in chunks on Ray workers.

Both connect through :mod:`workbench.distributed.ray_cluster`, which also keeps the one
per-worker model cache. Multi-GPU placement of one model is
``load_model(..., device_map="auto", max_memory=...)``.
"""

from workbench.distributed.cache import cache_activations_ray
from workbench.distributed.evals import run_suite_ray

__all__ = ["cache_activations_ray", "run_suite_ray"]
