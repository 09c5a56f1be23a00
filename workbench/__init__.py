"""workbench: a Jupyter-first interpretability and safety workbench for LLaMA-family models.

>>> import workbench as wb
>>> model = wb.load_model()                                  # doctest: +SKIP
>>> logits, cache = model.run_with_cache("The capital of France is")  # doctest: +SKIP
"""

from workbench.errors import CheckpointError, ChecksumError, WorkbenchError
from workbench.evals import EvalResult, SuiteResult, list_suites, run_eval, run_suite
from workbench.evals.data_pull import pull as pull_data
from workbench.evals.report import write_report
from workbench.evals.scorers import Scorer, get_scorer
from workbench.hooks import hook_catalogue, names_filter_fn, select_hooks
from workbench.models.hooked import HookedLlama, ModelSource
from workbench.models.loading import detect_format, load_model
from workbench.models.verify import VerifyReport, verify_checkpoint
from workbench import probing as probes
from workbench.patching import (
    DoseResponse,
    PatchResult,
    PatchingError,
    attribution_agreement,
    attribution_patch,
    dose_response,
    kl_to_clean,
    logit_diff,
    patch_sweep,
    token_alignment,
    token_prob,
)
from workbench.probing import Direction, LinearProbe, MassMeanProbe, ProbeResult, RidgeProbe, probe_sweep
from workbench.store import ActivationStore, ShardedArray, StoreError, cache_activations
from workbench import viz
from workbench.viz import AttentionViewer, LogitLensViewer, ModelExplorer, ProbeExplorer, logit_lens
from workbench.viz import EvalDashboard, PatchingExplorer, SteeringGenerator

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "EvalResult",
    "SuiteResult",
    "list_suites",
    "run_eval",
    "run_suite",
    "Scorer",
    "get_scorer",
    "pull_data",
    "write_report",
    "DoseResponse",
    "PatchResult",
    "PatchingError",
    "attribution_agreement",
    "attribution_patch",
    "dose_response",
    "kl_to_clean",
    "logit_diff",
    "patch_sweep",
    "token_alignment",
    "token_prob",
    "AttentionViewer",
    "EvalDashboard",
    "LogitLensViewer",
    "ModelExplorer",
    "Direction",
    "LinearProbe",
    "MassMeanProbe",
    "ProbeResult",
    "RidgeProbe",
    "CheckpointError",
    "ChecksumError",
    "HookedLlama",
    "ModelSource",
    "PatchingExplorer",
    "ProbeExplorer",
    "ShardedArray",
    "SteeringGenerator",
    "StoreError",
    "VerifyReport",
    "WorkbenchError",
    "cache_activations",
    "detect_format",
    "hook_catalogue",
    "load_model",
    "logit_lens",
    "names_filter_fn",
    "probe_sweep",
    "probes",
    "select_hooks",
    "verify_checkpoint",
    "viz",
]
