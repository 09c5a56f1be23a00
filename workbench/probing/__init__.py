"""Probing: concept datasets ("what does each layer know?") and, later, probes over them."""

from workbench.probing.concepts import Concept, list_concepts, load

__all__ = ["Concept", "list_concepts", "load"]
