"""Probing: concept datasets, linear probes, per-layer sweeps and the directions they yield.

The concept loader is also ``wb.load_concept("gender")``.
"""

from workbench.probing.concepts import Concept, list_concepts, load
from workbench.models.direction import Direction, load_directions, save_directions
from workbench.probing.estimators import LinearProbe, MassMeanProbe, RidgeProbe, fit_logistic_layers
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
    "load",
    "load_directions",
    "probe_sweep",
    "save_directions",
]
