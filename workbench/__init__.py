"""workbench: a Jupyter-first interpretability and safety workbench for LLaMA-family models.

>>> import workbench as wb
>>> model = wb.load_model()                                  # doctest: +SKIP
>>> logits, cache = model.run_with_cache("The capital of France is")  # doctest: +SKIP
"""

from workbench.errors import CheckpointError, ChecksumError, WorkbenchError
from workbench.hooks import hook_catalogue, names_filter_fn, select_hooks
from workbench.models.hooked import HookedLlama, ModelSource
from workbench.models.loading import detect_format, load_model
from workbench.models.verify import VerifyReport, verify_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "HookedLlama",
    "ModelSource",
    "VerifyReport",
    "WorkbenchError",
    "detect_format",
    "hook_catalogue",
    "load_model",
    "names_filter_fn",
    "select_hooks",
    "verify_checkpoint",
]
