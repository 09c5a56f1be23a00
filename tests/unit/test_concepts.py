"""Probe concept files (probes/*.yaml), their loader and recipes (workbench.probing.concepts, .recipes)."""

import os
import re
import string
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.common.data_dir import DATA_ENV
from workbench.common.errors import MissingDataError, WorkbenchError
from workbench.probing import Concept, list_concepts, load_concept
from workbench.probing.concepts import concepts_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get(DATA_ENV) or ROOT.parent / "shared" / "data")
HAS_TOXIGEN = (DATA / "toxigen" / "prompts").is_dir()
BUILTIN = ["gender", "sentiment", "toxicity", "truth"]
BALANCE_TOLERANCE = 0.02  # |share of label 1 - 0.5|; every built-in concept is in fact exact


@pytest.fixture(scope="module")
def concepts():
    """Each built-in concept loaded once (toxicity only when the data directory is here)."""
    names = [n for n in BUILTIN if n != "toxicity" or HAS_TOXIGEN]
    return {n: load_concept(n, data_dir=DATA) for n in names}


def _get(concepts, name):
    if name not in concepts:
        pytest.skip(f"no ToxiGen data under {DATA} (set {DATA_ENV})")
    return concepts[name]


def _spec(name):
    return yaml.safe_load((concepts_dir() / f"{name}.yaml").read_text())


def _write(tmp_path, text, name="concept.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------ every concept --

def test_builtin_concepts_are_listed_and_named_after_their_file():
    assert set(BUILTIN) <= set(list_concepts())
    for name in list_concepts():
        spec = _spec(name)
        assert spec["name"] == name
        assert "confound" in spec["card"].lower() and "labels:" in spec["card"].lower()


@pytest.mark.parametrize("name", BUILTIN)
def test_concept_loads_as_a_tidy_frame(concepts, name):
    c = _get(concepts, name)
    assert isinstance(c, Concept) and c.name == name and c.card
    f = c.frame
    assert list(f.columns[:4]) == ["text", "label", "group", "word"]
    assert f["label"].dtype == np.int64 and set(f["label"]) == {0, 1}
    assert len(c.label_names) == 2
    assert not f[["text", "group", "word"]].isna().any().any()
    assert (f["text"].str.len() > 0).all() and f["text"].is_unique
    assert re.fullmatch(r"[0-9a-f]{64}", c.source_hash)
    assert c.texts == f["text"].tolist() and c.labels.tolist() == f["label"].tolist()
    assert c.groups.tolist() == f["group"].tolist() and len(c) == len(f)
    assert name in repr(c)
    assert 400 <= len(c) <= 5000


@pytest.mark.parametrize("name", BUILTIN)
def test_labels_are_balanced(concepts, name):
    c = _get(concepts, name)
    assert abs(c.labels.mean() - 0.5) <= BALANCE_TOLERANCE
    if name != "truth":  # truth groups are facts: balanced too, checked below
        per_group = c.frame.groupby("group")["label"].mean()
        assert (per_group == 0.5).all(), per_group[per_group != 0.5]


@pytest.mark.parametrize("name", BUILTIN)
def test_control_word_is_consistent(concepts, name):
    """Hewitt & Liang control task: one random label per word type, so a word type must
    carry one label and sit in one group (else grouped CV would leak it)."""
    f = _get(concepts, name).frame
    assert (f["word"].str.len() > 0).all()
    assert (f.groupby("word")["label"].nunique() == 1).all()
    assert (f.groupby("word")["group"].nunique() == 1).all()
    assert f.groupby("label")["word"].nunique().min() >= 5
    rng = np.random.default_rng(0)
    types = f["word"].unique()
    control = f["word"].map(dict(zip(types, rng.integers(0, 2, len(types)), strict=True)))
    assert (control.groupby(f["word"]).nunique() == 1).all()


def test_source_hash_depends_on_the_file(tmp_path):
    text = (concepts_dir() / "sentiment.yaml").read_text()
    a = load_concept(_write(tmp_path, text, "a.yaml"))
    b = load_concept(_write(tmp_path, text + "\n# edited\n", "b.yaml"))
    assert a.source_hash == load_concept("sentiment").source_hash != b.source_hash
    assert a.frame.equals(b.frame)


# ---------------------------------------------------------------------------- gender --

def _minimal_pairs(frame, forms_by_word):
    """Every (item, group) is two sentences, one per label, equal except for label words."""
    strip = str.maketrans("", "", string.punctuation.replace("'", ""))
    for _, pair in frame.groupby(["item", "group"]):
        assert sorted(pair["label"]) == [0, 1], pair
        allowed = {w.lower() for word in pair["word"] for form in forms_by_word[word]
                   for w in form.split()}
        a, b = (t.translate(strip).lower().split() for t in pair["text"])
        assert len(a) == len(b), pair["text"].tolist()
        diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        assert diff and all(x in allowed and y in allowed for x, y in diff), diff


def test_gender_pairs_differ_only_in_gendered_words(concepts):
    f = concepts["gender"].frame
    people = _spec("gender")["grammar"]["slots"]["person"]
    forms = {p["word"]: [str(v) for k, v in p.items() if k not in ("label", "group")] for p in people}
    _minimal_pairs(f, forms)
    # Occupations cannot predict the label: each appears equally often with both.
    assert (f.groupby("occupation")["label"].mean() == 0.5).all()
    # A name never appears in two groups, so grouped CV keeps it out of training when tested.
    assert f.groupby("word")["group"].nunique().max() == 1 and f["group"].nunique() == 14


def test_sentiment_pairs_differ_only_in_the_adjective(concepts):
    adjectives = _spec("sentiment")["grammar"]["slots"]["adj"]
    _minimal_pairs(concepts["sentiment"].frame, {a["word"]: [a["word"]] for a in adjectives})


# ----------------------------------------------------------------------------- truth --

def test_truth_statements_agree_with_the_tables(concepts):
    f = concepts["truth"].frame
    tables = {t["table"]: t for t in _spec("truth")["facts"]}
    assert set(f["table"]) == set(tables)
    for row in f.itertuples():
        t = tables[row.table]
        if isinstance(t["rows"], dict):  # lookup tables: true iff the table says so
            facts = {str(k): str(v) for k, v in t["rows"].items()}
            assert row.subject in facts
            assert row.label == int(facts[row.subject] == row.object), row.text
        else:  # comparisons: true iff the arithmetic says so
            s, o = int(row.subject), int(row.object)
            assert row.label == int(s > o if row.table == "larger_than" else s < o), row.text
        assert row.subject in row.text and row.object in row.text
    # A few facts checked by hand, independently of the tables.
    texts = dict(zip(f["text"], f["label"], strict=True))
    assert texts["The city of Paris is in France."] == 1
    assert texts["The Spanish word 'perro' means 'dog'."] == 1
    assert texts["52 is larger than 30."] == 1 and texts["30 is larger than 52."] == 0
    assert texts["20 is smaller than 88."] == 1 and texts["88 is smaller than 20."] == 0


def test_truth_grouped_split_keeps_both_versions_of_a_fact_together(concepts):
    f = concepts["truth"].frame
    # Each group is one fact: per template one true and one false statement.
    per = f.groupby(["group", "template"])["label"].agg(["count", "sum"])
    assert (per["count"] == 2).all() and (per["sum"] == 1).all()
    # Any split by group (here: 5 folds by group id) puts a fact's true and false versions
    # and all its templates in the same fold.
    fold = dict(zip(f["text"], pd.factorize(f["group"])[0] % 5, strict=True))
    negative = {t["table"]: t["negative"] for t in _spec("truth")["facts"]}
    by_claim = {(r.table, r.template, r.subject, r.object): r.text for r in f.itertuples()}
    falses = {(r.table, r.template, r.subject): r.text for r in f[f["label"] == 0].itertuples()}
    for r in f[f["label"] == 1].itertuples():
        if negative[r.table] == "swap":  # the false twin is the swapped claim
            twin = by_claim[(r.table, r.template, r.object, r.subject)]
        else:  # rotate: the false twin is the same subject with another object
            twin = falses[(r.table, r.template, r.subject)]
        assert fold[twin] == fold[r.text], (r.text, twin)


# -------------------------------------------------------------------------- toxicity --

@pytest.mark.skipif(not HAS_TOXIGEN, reason=f"no ToxiGen data under {DATA} (set {DATA_ENV})")
def test_toxicity_follows_its_selection_rule(concepts):
    c = concepts["toxicity"]
    f = c.frame
    spec = _spec("toxicity")
    assert set(f["group"]) == set(spec["source"]["groups"])
    assert not f["text"].str.contains(r"\\n", regex=False).any()
    assert not f["text"].str.startswith("-").any()
    assert f.groupby("source").size().max() <= spec["selection"]["per_file"]
    assert f["source"].str.startswith("toxigen/prompts/").all()
    # Every statement is really in the file it is attributed to, with that file's label.
    for (source, label), rows in f.groupby(["source", "label"]):
        assert source.split("/")[-1].startswith(c.label_names[label] + "_")
        raw = (DATA / source).read_text(encoding="utf-8")
        assert all(t in raw for t in rows["text"])
    assert load_concept("toxicity", data_dir=DATA).frame.equals(f)  # deterministic


def test_source_without_data_names_the_file_and_the_variable(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError, match=r"_asian_1k\.txt.*WORKBENCH_DATA"):
        load_concept("toxicity", data_dir=tmp_path)
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-such-home"))  # no per-user data either
    with pytest.raises(FileNotFoundError, match="WORKBENCH_DATA"):  # still a FileNotFoundError
        load_concept("toxicity")


def test_no_data_folder_is_the_projects_own_error_saying_where_it_looked(tmp_path, monkeypatch):
    """`workbench probe --concept toxicity` with no data folder: MissingDataError, not a bare
    FileNotFoundError, naming the folder it looked in, why there, and how to fill it."""
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingDataError) as info:
        load_concept("toxicity", data_dir=missing)
    assert isinstance(info.value, WorkbenchError) and isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "concept 'toxicity'" in message and str(missing) in message and "data_dir argument" in message
    assert "workbench data pull" in message
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(MissingDataError, match=r"xdg/workbench/data.*per-user default.*WORKBENCH_DATA"):
        load_concept("toxicity")
    monkeypatch.setenv(DATA_ENV, str(missing))
    with pytest.raises(MissingDataError, match=r"nowhere \(from \$WORKBENCH_DATA\)"):
        load_concept("toxicity")


def test_source_selection_on_small_files(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "d").mkdir(parents=True)
    (data / "d/pos_a.txt").write_text("- a1\\n- a2\\n- shared\\n- a1\n- a3\\n- a4\n")
    (data / "d/neg_a.txt").write_text("- n1\\n- shared\n- n2\n")
    (data / "d/pos_b.txt").write_text("- b1\n")
    (data / "d/neg_b.txt").write_text("- m1\n- m2\n")
    path = _write(tmp_path, """
name: tiny
card: test
label_names: [neg, pos]
source:
  format: lines
  split: '\\n'
  strip_prefix: "-"
  files: "d/{label}_{group}.txt"
  groups: [a, b]
selection: {per_file: 2, balance: group}
""")
    monkeypatch.setenv(DATA_ENV, str(data))  # the environment variable is the default
    f = load_concept(path).frame
    # "shared" is in two files: dropped; then the first 2 per file; then balanced per group.
    assert f.sort_values(["group", "label", "text"])["text"].tolist() == ["n1", "n2", "a1", "a2", "m1", "b1"]
    assert f.groupby("group")["label"].mean().tolist() == [0.5, 0.5]
    before = load_concept(path).source_hash
    (data / "d/neg_b.txt").write_text("- m1\n- m3\n")  # the hash covers the data read
    assert load_concept(path).source_hash != before


# ----------------------------------------------------------------------------- limit --

@pytest.mark.parametrize("name", ["gender", "truth"])
def test_limit_is_balanced_and_deterministic(concepts, name):
    full = concepts[name]
    a, b = load_concept(name, limit=100), load_concept(name, limit=100)
    other = load_concept(name, limit=100, seed=1)
    assert a.frame.equals(b.frame) and not a.frame.equals(other.frame)
    assert len(a) == 100 and a.frame["label"].value_counts().tolist() == [50, 50]
    assert set(a.texts) <= set(full.texts) and a.source_hash == full.source_hash
    # Round-robin over groups: within a class no group has 2 more examples than another
    # (counting only groups that have examples of that class).
    for _, rows in a.frame.groupby("label"):
        counts = rows["group"].value_counts()
        if len(counts) < full.frame["group"].nunique():  # fewer picks than groups: one each
            assert counts.max() == 1
        else:
            assert counts.max() - counts.min() <= 1
    assert a.limit == 100 and other.seed == 1
    assert load_concept(name, limit=10**6).frame.equals(full.frame)


def test_limit_rejects_nonsense():
    for bad in (0, 1, -5, True, 2.5):
        with pytest.raises(ValueError, match="limit"):
            load_concept("sentiment", limit=bad)


# ---------------------------------------------------------------------------- errors --

def test_unknown_concept_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown concept 'colour'.*gender.*truth"):
        load_concept("colour")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_concept("/no/such/nope.yaml")


GOOD = """
name: tiny
card: test
label_names: [neg, pos]
grammar:
  label_slot: adj
  templates: ["It was {adj}."]
  slots:
    adj:
      - {label: pos, word: good}
      - {label: neg, word: bad}
"""


@pytest.mark.parametrize("text, match", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    (GOOD.replace("name: tiny\n", ""), "`name` is missing"),
    (GOOD.replace("[neg, pos]", "[no, yes]"), "`label_names`"),
    (GOOD.replace("grammar:", "source: {}\ngrammar:"), "exactly one recipe"),
    (GOOD.replace("label: neg", "label: pos"), "at least two classes"),
    (GOOD.replace("label: neg", "label: meh"), r"`grammar\.slots\.adj\[1\]\.label`"),
    (GOOD.replace("It was {adj}.", "It was {adj} {when}."), r"slot \{when\}"),
    (GOOD.replace("It was {adj}.", "It was {adj.plural}."), "no 'plural'"),
    (GOOD.replace("It was {adj}.", "It was."), "does not use the label slot"),
    (GOOD.replace("label_slot: adj", "label_slot: noun"), "`grammar.label_slot`"),
    ("name: t\ncard: c\nlabel_names: [f, t]\nfacts:\n  - {table: x, negative: rotate, "
     "templates: ['{subject} is {object}.'], rows: [[a, b], [a, c]]}\n", "repeats a subject"),
    ("name: t\ncard: c\nlabel_names: [f, t]\nfacts:\n  - {table: x, negative: flip, "
     "templates: ['{subject} {object}'], rows: {a: b}}\n", r"`facts\[x\]\.negative`"),
    ("name: t\ncard: c\nlabel_names: [f, t]\nsource: {files: 'x_{label}.txt', format: pdf}\n",
     "`source.format`"),
])
def test_malformed_file_names_the_file_and_the_key(tmp_path, text, match):
    path = _write(tmp_path, text, "broken.yaml")
    with pytest.raises(ValueError, match=match) as info:
        load_concept(path, data_dir=tmp_path)
    assert "broken.yaml" in str(info.value)


def test_good_tiny_file_loads_by_path(tmp_path):
    c = load_concept(_write(tmp_path, GOOD))
    assert c.texts == ["It was good.", "It was bad."] and c.labels.tolist() == [1, 0]
    assert c.groups.tolist() == ["good", "bad"]  # group defaults to the word


# ------------------------------------------------------------------------- packaging --

def test_every_subpackage_ships_and_probes_ship_inside_workbench():
    """pyproject lists packages by hand (see the comment there): a new subpackage must be
    added, and the concept files must install as workbench/probe_data/, never as `probes`."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "workbench").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert setuptools["package-dir"]["workbench.probe_data"] == "probes"
    assert not any(p == "probes" or p.startswith("probes.") for p in listed)
    assert "*.yaml" in setuptools["package-data"]["workbench.probe_data"]
    assert {f"{n}.yaml" for n in BUILTIN} <= {p.name for p in concepts_dir().iterdir()}
