"""The runnable ``>>>`` examples in workbench.viz (the others need a model and are skipped)."""

import doctest
import importlib

import pytest

# By import path: workbench.viz.logit_lens the attribute is the function, not the module.
MODULES = ["_common", "attention", "compare", "feature_explorer", "paired", "logit_lens", "model_explorer", "probe_explorer", "widgets"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(f"workbench.viz.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and (result.attempted > 0 or name not in ("_common", "model_explorer"))
