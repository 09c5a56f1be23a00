"""The suite-kind registry: every suite file's kind has one row; a missing plug-in is checked, not guessed."""

import dataclasses

import pytest

from workbench.evals import KINDS, DataError, MissingPluginError, run_eval, run_suite
from workbench.evals.kinds import file_kinds, kind_of
from workbench.evals.options import N_BOOTSTRAP, EvalOptions
from workbench.evals.scoring import DERIVE
from workbench.evals.suites import list_suites, load_suite


def test_every_suite_file_kind_has_exactly_one_row():
    assert set(KINDS) >= {"loglik", "toxicity"}
    assert len(file_kinds()) == len(set(file_kinds()))  # no file kind claimed by two rows
    assert set(KINDS["loglik"].file_kinds) == set(DERIVE)  # one per sample-deriving function
    for name in list_suites():
        assert kind_of(load_suite(name).kind) in KINDS.values()
    assert kind_of("toxicity").name == "toxicity" and kind_of("bbq").name == "loglik"
    with pytest.raises(DataError, match="not one of"):
        kind_of("refusal_judge")


def test_a_suite_file_with_an_unknown_kind_names_itself(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("name: odd\nkind: refusal_judge\n")
    with pytest.raises(DataError, match=r"odd\.yaml: kind 'refusal_judge' is not one of multiple_choice, "):
        load_suite(str(path))


def test_runners_load_when_installed():
    for row in KINDS.values():
        assert row.missing() == []
        assert callable(row.load_runner())


def test_a_missing_module_is_an_explicit_skip(tiny_model, monkeypatch, tmp_path):
    """A kind that needs an absent module: run_eval raises, run_suite lists the suite as skipped."""
    toxicity = KINDS["toxicity"]
    needy = dataclasses.replace(toxicity, requires=("no_such_module_for_this_test",))
    monkeypatch.setitem(KINDS, "toxicity", needy)
    assert needy.missing() == ["no_such_module_for_this_test"]
    with pytest.raises(MissingPluginError, match="no_such_module_for_this_test"):
        run_eval(tiny_model, "toxicity", data_dir=tmp_path, progress=False)
    suite = run_suite(tiny_model, "toxicity", data_dir=tmp_path, out=tmp_path / "run", progress=False)
    assert suite.results == {} and "toxicity plug-in (no_such_module_for_this_test)" in suite.skipped["toxicity"]
    # a runner that fails to load for any other reason is an error to see, not a suite to skip
    broken = dataclasses.replace(toxicity, runner="workbench.evals.toxicity:no_such_runner")
    monkeypatch.setitem(KINDS, "toxicity", broken)
    with pytest.raises(AttributeError):
        run_suite(tiny_model, "toxicity", data_dir=tmp_path, progress=False)


def test_one_params_builder():
    opts = EvalOptions(limit=5, seed=2, errors="skip")
    assert opts.params({"mode": "full"}, {"mode": "quick", "k": 2}) == {
        "limit": 5, "seed": 2, "errors": "skip", "n_bootstrap": N_BOOTSTRAP, "mode": "quick", "k": 2}
    assert opts.group_params() == {"limit": 5, "seed": 2, "errors": "skip", "data_dir": None}
    with pytest.raises(ValueError, match="errors must be"):
        EvalOptions(errors="ignore")


def test_the_manifest_section_comes_from_the_kind(tiny_model):
    res = run_eval(tiny_model, "true_false_facts", progress=False)
    m = res.manifest
    assert m["scorer"] is None and m["sampling"] is None
    assert m["loglik"]["delimiter"] == load_suite("true_false_facts").prompt.get("delimiter", " ")
    assert "lm-evaluation-harness" in m["loglik"]["convention"]
    assert m["params"] == EvalOptions().params(load_suite("true_false_facts").params)
    keys = list(m)
    assert keys.index("n_examples") < keys.index("scorer") < keys.index("loglik") < keys.index("interventions")
