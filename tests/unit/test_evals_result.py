"""The one saved-run model and reader: EvalResult / SuiteResult / load_run, written atomically."""

import json

import pandas as pd
import pytest

from workbench.common.errors import WorkbenchError
from workbench.evals import EvalResult, SavedRunError, SuiteResult, load_run
from workbench.evals.result import METRIC_COLUMNS, is_complete


def result(suite="facts", value=0.5):
    metrics = pd.DataFrame([(suite, "acc", "all", value, 0.25, 0.75, 2)], columns=METRIC_COLUMNS)
    samples = pd.DataFrame({"example_id": [f"{suite}:0", f"{suite}:1"], "suite": suite, "category": "",
                            "loglik": [[-1.0, -2.0], [-3.0, -0.5]]})
    return EvalResult(metrics, samples, {"suite": {"name": suite}, "n_examples": 2})


def test_save_and_load_round_trip_leaves_no_temporary_files(tmp_path):
    folder = result().save(tmp_path / "facts")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "metrics.parquet", "samples.parquet"]
    again = EvalResult.load(folder)
    pd.testing.assert_frame_equal(again.metrics, result().metrics)
    assert again.samples["loglik"].map(list).tolist() == [[-1.0, -2.0], [-3.0, -0.5]]
    assert again.manifest == {"suite": {"name": "facts"}, "n_examples": 2, "format_version": 1}
    assert again.suite == "facts" and is_complete(folder)
    loaded = load_run(folder)
    assert isinstance(loaded, EvalResult) and loaded.suite == "facts"


def test_the_suite_name_falls_back_to_the_metrics_table():
    res = result("winobias")
    res.manifest = {}
    assert res.suite == "winobias"


def test_group_folders_list_finished_suites_only(tmp_path):
    group = SuiteResult("quick", {"a": result("a"), "b": result("b", 0.9)}, {"c": "data missing"}, {"seed": 0})
    group.save(tmp_path / "quick")
    (tmp_path / "quick" / "b" / "manifest.json").unlink()  # b is still running: left out
    index = json.loads((tmp_path / "quick" / "suite.json").read_text())
    assert index["suites"] == ["a", "b"] and index["skipped"] == {"c": "data missing"}
    loaded = load_run(tmp_path / "quick")
    assert isinstance(loaded, SuiteResult) and list(loaded.results) == ["a"]
    assert (loaded.group, loaded.skipped, loaded.params) == ("quick", {"c": "data missing"}, {"seed": 0})
    pd.testing.assert_frame_equal(loaded.metrics, result("a").metrics)
    assert list(SuiteResult("empty").metrics.columns) == METRIC_COLUMNS


@pytest.mark.parametrize("damage, message", [
    ("no folder", "no such run folder"),
    ("empty folder", "not a saved eval run"),
    ("manifest.json", "no manifest.json: the run did not finish"),
    ("samples.parquet", "samples.parquet missing"),
    ("bad json", "manifest.json: not valid JSON"),
])
def test_damaged_folders_name_what_is_wrong(tmp_path, damage, message):
    folder = tmp_path / "run"
    if damage == "empty folder":
        folder.mkdir()
    elif damage != "no folder":
        result().save(folder)
        if damage == "bad json":
            (folder / "manifest.json").write_text('{"suite": ')
        else:
            (folder / damage).unlink()
    with pytest.raises(SavedRunError, match=message) as err:
        load_run(folder)
    assert isinstance(err.value, WorkbenchError) and isinstance(err.value, FileNotFoundError)


def test_a_damaged_suite_in_a_group_raises(tmp_path):
    SuiteResult("quick", {"a": result("a")}).save(tmp_path / "quick")
    (tmp_path / "quick" / "a" / "metrics.parquet").unlink()
    with pytest.raises(SavedRunError, match="metrics.parquet missing"):
        load_run(tmp_path / "quick")
    (tmp_path / "quick" / "suite.json").write_text("{")
    with pytest.raises(SavedRunError, match="suite.json: not valid JSON"):
        SuiteResult.load(tmp_path / "quick")
    with pytest.raises(SavedRunError, match="no suite.json"):
        SuiteResult.load(tmp_path / "quick" / "a")
