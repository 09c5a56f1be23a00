"""Features: sparse autoencoders and transcoders, trained from the store, in the field's formats.

``sae.py`` (:class:`SparseAutoencoder`: TopK / ReLU / JumpReLU, SAEs and transcoders),
``formats.py`` (:func:`load_sae`, ``sae.save``: SAELens's layout, sparsify's read too),
``train.py`` (:func:`train_sae`: streamed from an ``ActivationStore``, seeded, resumable; its
TopK encoder with a sparse backward in ``topk_encoder.py``),
``metrics.py`` (:func:`sae_metrics`: L0, FVU, CE loss recovered, dead and dense latents) and
``contrasts.py`` (:func:`feature_contrasts`: the latents that differ most between the two sides
of a suite's contrasts, with paired tests and Benjamini-Hochberg).
Splicing an SAE into the model (``model.sae(sae)``) is the model floor's
(``workbench.models.splice``), which reads any object with ``encode`` / ``decode``.
"""

from workbench.features.contrasts import (
    contrasts_from_frame,
    crows_pairs_contrasts,
    feature_contrasts,
    refusal_contrasts,
    truthfulqa_contrasts,
)
from workbench.features.formats import load_sae
from workbench.features.metrics import sae_metrics
from workbench.features.sae import SAEError, SparseAutoencoder
from workbench.features.train import train_sae

__all__ = ["SAEError", "SparseAutoencoder", "load_sae", "sae_metrics", "train_sae", "feature_contrasts",
           "contrasts_from_frame", "crows_pairs_contrasts", "truthfulqa_contrasts", "refusal_contrasts"]
