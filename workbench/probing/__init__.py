"""Probing: concept datasets, linear probes, per-layer sweeps and the directions they yield.

- concepts: :func:`load_concept` / :func:`list_concepts` (YAML files in ``probes/``; the recipes
  that expand them are in ``recipes.py``);
- estimators: :class:`LinearProbe`, :class:`MassMeanProbe`, :class:`RidgeProbe` (scikit-learn
  style), on the batched solver of ``logistic.py`` (:func:`fit_logistic_layers`);
- :func:`probe_sweep`: where in the model a concept is linearly readable (:class:`ProbeResult`);
- directions: :class:`Direction` and its files, re-exported from :mod:`workbench.models.direction`.

>>> from workbench.probing import load_concept
>>> load_concept("gender", limit=10).label_names
('female', 'male')
"""

from workbench.models.direction import Direction, load_directions, save_directions
from workbench.probing.concepts import Concept, list_concepts, load_concept
from workbench.probing.estimators import LinearProbe, MassMeanProbe, RidgeProbe
from workbench.probing.logistic import fit_logistic_layers
from workbench.probing.sweep import ProbeResult, probe_sweep

__all__ = [
    "Concept",
    "Direction",
    "LinearProbe",
    "MassMeanProbe",
    "ProbeResult",
    "RidgeProbe",
    "fit_logistic_layers",
    "list_concepts",
    "load_concept",
    "load_directions",
    "probe_sweep",
    "save_directions",
]
