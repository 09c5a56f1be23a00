"""Past one machine: data-parallel caching on Ray (an optional extra: ``workbench[distributed]``).

Multi-GPU placement of one model is ``wb.load_model(..., device_map="auto", max_memory=...)``.
"""

from workbench.distributed.cache import cache_activations_ray
from workbench.distributed.evals import run_suite_ray

__all__ = ["cache_activations_ray", "run_suite_ray"]
