"""Views: pure ``data -> plotly Figure`` functions, and widgets that compose them.

Plot functions take arrays and tables and return a ``plotly.graph_objects.Figure``; widgets
(``ModelExplorer``, ``AttentionViewer``, ``LogitLensViewer``, ``ProbeExplorer``, ``PatchingExplorer``,
``SteeringGenerator``, ``EvalDashboard``) compose them with ipywidgets
controls and run model work in the kernel when a control changes.
"""

from workbench.viz._common import escape, token_labels
from workbench.viz.attention import attention_head_grid, attention_heatmap, attention_patterns
from workbench.viz.eval_dashboard import EvalDashboard, compare_category_figure, compare_metrics_figure, drilldown
from workbench.viz.logit_lens import (
    LogitLens,
    decode_residual,
    logit_lens,
    logit_lens_figure,
    residual_stack,
    target_probability_figure,
)
from workbench.viz.model_explorer import activation_figure, info_html, search_catalogue
from workbench.viz.patching_explorer import PatchingExplorer, patched_prediction
from workbench.viz.probe_explorer import ProbeExplorer, probe_projection_figure
from workbench.viz.probes import probe_accuracy_figure
from workbench.viz.steering_widget import SteeringGenerator
from workbench.viz.widgets import AttentionViewer, LogitLensViewer, ModelExplorer

__all__ = [
    "AttentionViewer",
    "EvalDashboard",
    "LogitLens",
    "LogitLensViewer",
    "ModelExplorer",
    "PatchingExplorer",
    "ProbeExplorer",
    "SteeringGenerator",
    "activation_figure",
    "attention_head_grid",
    "attention_heatmap",
    "attention_patterns",
    "compare_category_figure",
    "compare_metrics_figure",
    "decode_residual",
    "drilldown",
    "escape",
    "info_html",
    "logit_lens",
    "logit_lens_figure",
    "patched_prediction",
    "probe_accuracy_figure",
    "probe_projection_figure",
    "residual_stack",
    "search_catalogue",
    "target_probability_figure",
    "token_labels",
]
