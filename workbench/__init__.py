"""workbench: a Jupyter-first interpretability and safety workbench for LLaMA-family models.

The public API, in the order of the flow: load a model, select its hooks, cache activations,
probe / patch / evaluate, then look at the results (``wb.viz``: plots, widgets, the HTML report).
Everything else lives in the subpackages (``workbench.models``, ``workbench.store``,
``workbench.probing``, ``workbench.patching``, ``workbench.evals``, ``workbench.viz``,
``workbench.distributed``), whose layers ``docs/architecture.md`` describes.

Names are imported on first use, so ``import workbench`` is quick and importing one layer does
not pull in the ones above it.

>>> import workbench as wb
>>> model = wb.load_model()                                  # doctest: +SKIP
>>> logits, cache = model.run_with_cache("The capital of France is")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it, grouped by the flow.
_API: dict[str, str] = {
    # load: a checkpoint in any format becomes a hooked model
    "load_model": "workbench.models.loading",
    "verify_checkpoint": "workbench.models.verify",
    "diff_checkpoints": "workbench.models.diff",
    "compare_models": "workbench.models.compare",
    "HookedLlama": "workbench.models.hooked",
    # hooks, directions and interventions (model.steer / model.ablate ...)
    "select_hooks": "workbench.models.hooks",
    "Direction": "workbench.models.direction",
    "load_directions": "workbench.models.direction",
    # store: activations over a dataset, on disk or in memory
    "cache_activations": "workbench.store",
    "ActivationStore": "workbench.store",
    # probe: what each layer knows
    "load_concept": "workbench.probing",
    "probe_sweep": "workbench.probing",
    "LinearProbe": "workbench.probing",
    "MassMeanProbe": "workbench.probing",
    "RidgeProbe": "workbench.probing",
    # patch: what causes a behaviour
    "patch_sweep": "workbench.patching",
    "attribution_patch": "workbench.patching",
    "attribution_agreement": "workbench.patching",
    "dose_response": "workbench.patching",
    "logit_diff": "workbench.patching",
    "token_prob": "workbench.patching",
    "kl_to_clean": "workbench.patching",
    "token_alignment": "workbench.patching",
    "refusal_direction": "workbench.patching",
    # evaluate: bias, toxicity, truthfulness, misuse and refusal suites
    "run_eval": "workbench.evals",
    "run_suite": "workbench.evals",
    "list_suites": "workbench.evals",
    "load_run": "workbench.evals",
    "get_scorer": "workbench.evals",
    "get_judge": "workbench.evals.judges",
    "judge_agreement": "workbench.evals.agreement",
    "compare_runs": "workbench.evals.compare",
    "pull_data": "workbench.evals",
    # train: LoRA fine-tuning, a second model to compare
    "finetune": "workbench.training",
    # features: sparse autoencoders and transcoders (model.sae(sae) splices one in)
    "train_sae": "workbench.features",
    "load_sae": "workbench.features",
    "sae_metrics": "workbench.features",
    # views: plots and widgets (wb.viz.AttentionViewer ...), the offline HTML report
    "viz": "workbench.viz",
    "write_report": "workbench.viz",
    # errors
    "WorkbenchError": "workbench.common.errors",
    "CheckpointError": "workbench.common.errors",
    "ChecksumError": "workbench.common.errors",
}

__all__ = list(_API)

_SUBPACKAGES = {"common", "models", "store", "probing", "patching", "evals", "training", "features", "viz", "distributed", "cli"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"workbench.{name}")
    if name not in _API:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    value = module if module.__name__ == f"workbench.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES, "__version__"])
