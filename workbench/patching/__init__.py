"""Activation patching and steering: what in the model causes a behaviour?

- :func:`patch_sweep`: exact activation patching over (layer, position) or (layer, head) cells,
  batched and resumed from the patched layer; equal to TransformerLens's ``get_act_patch_*``.
  :func:`patched_logits` re-runs one cell (or a few together) as one forward.
- :func:`attribution_patch`: the gradient estimate of every cell from three passes.
- :func:`feature_patch`: the same over a spliced SAE's latents, (position, latent) cells, exact
  or by attribution (``features.py``; the SAE is duck-typed).
- ``model.steer`` / ``model.ablate`` / ``model.ablate_heads`` / ``model.ablate_neurons``:
  temporary interventions (:mod:`workbench.models.interventions`).
- :func:`dose_response`: a metric against steering strength, with a placebo direction.
- :func:`refusal_direction`: Arditi et al.'s refusal direction (difference of means, scored by
  ablation / addition / KL and selected by their rule), with ``bypass()`` / ``induce()`` contexts
  and a placebo; :func:`category_directions` and :func:`cosine_matrix` per harm category.
- metrics: :func:`logit_diff`, :func:`token_prob`, :func:`kl_to_clean`, or any
  ``logits -> number`` callable; results: :class:`PatchResult` (``result.py``).
- sites (``SITES``, ``Site``) and the interventions are the ground floor's
  (:mod:`workbench.models.sites`, :mod:`workbench.models.interventions`), re-exported here.
"""

from workbench.common.errors import PatchingError
from workbench.models.interventions import ablate, ablate_heads, ablate_neurons, steer
from workbench.models.sites import SITES, Site
from workbench.patching.attribution import attribution_agreement, attribution_patch
from workbench.patching.dose import DoseResponse, dose_response
from workbench.patching.features import feature_patch
from workbench.patching.metrics import kl_to_clean, logit_diff, token_prob
from workbench.patching.refusal import (
    RefusalDirection,
    category_directions,
    cosine_matrix,
    refusal_direction,
    refusal_scores,
)
from workbench.patching.result import PatchResult
from workbench.patching.sweep import patch_sweep, patched_logits, token_alignment

__all__ = [
    "DoseResponse",
    "PatchResult",
    "PatchingError",
    "RefusalDirection",
    "SITES",
    "Site",
    "ablate",
    "ablate_heads",
    "ablate_neurons",
    "attribution_agreement",
    "attribution_patch",
    "category_directions",
    "cosine_matrix",
    "dose_response",
    "feature_patch",
    "kl_to_clean",
    "logit_diff",
    "patch_sweep",
    "patched_logits",
    "refusal_direction",
    "refusal_scores",
    "steer",
    "token_alignment",
    "token_prob",
]
