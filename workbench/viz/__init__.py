"""Views: pure ``data -> plotly Figure`` functions, and widgets that compose them."""

from workbench.viz.probes import probe_accuracy_figure

__all__ = ["probe_accuracy_figure"]
