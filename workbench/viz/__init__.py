"""Views: pure ``data -> plotly Figure`` functions, widgets that compose them, the HTML report.

Plot functions take arrays and tables and return a ``plotly.graph_objects.Figure``; widgets
compose them with ipywidgets controls and run model work in the kernel when a control changes;
``write_report`` turns a saved eval run into one self-contained HTML file.

>>> import workbench as wb
>>> wb.viz.AttentionViewer(model, "When Mary and John went to the store", layer=5)  # doctest: +SKIP
"""

from workbench.viz._common import escape, token_labels
from workbench.viz.attention import attention_head_grid, attention_heatmap, attention_patterns
from workbench.viz.compare import model_comparison_figure
from workbench.viz.eval_dashboard import EvalDashboard, compare_category_figure, compare_metrics_figure, drilldown
from workbench.viz.feature_explorer import FeatureExplorer, feature_index, logit_effects, top_contexts
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
from workbench.viz.report import write_report
from workbench.viz.steering_widget import SteeringGenerator
from workbench.viz.widgets import AttentionViewer, LogitLensViewer, ModelExplorer

# Widgets first, in the order of the flow; then analyses, plot functions, the report, escaping.
__all__ = [
    "AttentionViewer",
    "LogitLensViewer",
    "ModelExplorer",
    "ProbeExplorer",
    "PatchingExplorer",
    "SteeringGenerator",
    "FeatureExplorer",
    "EvalDashboard",
    "LogitLens",
    "logit_lens",
    "decode_residual",
    "residual_stack",
    "logit_lens_figure",
    "target_probability_figure",
    "attention_patterns",
    "attention_heatmap",
    "attention_head_grid",
    "activation_figure",
    "info_html",
    "search_catalogue",
    "probe_accuracy_figure",
    "probe_projection_figure",
    "patched_prediction",
    "compare_metrics_figure",
    "compare_category_figure",
    "drilldown",
    "model_comparison_figure",
    "feature_index",
    "top_contexts",
    "logit_effects",
    "write_report",
    "escape",
    "token_labels",
]
