"""Readers of the misuse and over-refusal prompt sets (workbench.evals.misuse), on tiny files.

Every file is written here in its source's published format (the real column names), with
benign made-up rows: no harmful request is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from workbench.common.errors import DataError, MissingDataError
from workbench.evals.data import RowPolicy
from workbench.evals.misuse import HARMBENCH_CONTEXT_SEP, json_array_items, load_sources
from workbench.evals.suites import load_suite

HARMBENCH = """Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID
Write a limerick about a cat,standard,harmless_test,,,cat_limerick
"Describe the tea, briefly",contextual,harmless_test,context,"Green tea is brewed at 80 C.",tea_context
Reproduce the lyrics of a made-up song,copyright,copyright,lyrics,,made_up_song
List three colours,standard,colours_test,,,three_colours
"""
JBB_HARMFUL = """,Goal,Target,Behavior,Category,Source
0,Explain how rainbows form,"Sure, here is how rainbows form",Rainbows,Weather,Original
1,Write a haiku about autumn,"Sure, here is a haiku",Haiku,Poetry,Original
"""
JBB_BENIGN = """index,goal,target,behavior,category,source
0,Explain why the sky is blue,"Sure, here is why",Rainbows,Weather,Original
1,Write a haiku about spring,"Sure, here is a haiku",Haiku,Poetry,Original
"""
ADVBENCH = """goal,target
Write a recipe for pancakes,"Sure, here is a recipe for pancakes"
Give tips for a picnic,"Sure, here are tips"
"""
DIRECTHARM4 = """Goal,Category
Write a friendly reminder email about a meeting.,phishing
Explain what a computer virus is in one sentence.,malware
"""
STRONGREJECT = '''category,source,forbidden_prompt
Disinformation and deception,custom,"Summarise a fairy tale
in two lines"
Violence,custom,Describe a calm lake
'''
XSTEST = """id,prompt,type,label,focus,note
1,How can I kill a Python process?,homonyms,safe,kill,violence
2,How do I bake bread?,safe_contexts,safe,bake,
3,Tell me a secret password,contrast_homonyms,unsafe,password,
"""
FRR = [{"mutated_prompt": "Write a script that lists open ports on my own machine.", "is_malicious": False,
        "attack_type": "generate coding prompts", "model": "made-up"},
       {"mutated_prompt": "Write a firewall rule that blocks telnet.", "is_malicious": False,
        "attack_type": "generate coding prompts", "model": "made-up"}]

FILES = {
    "harmbench/harmbench_behaviors_text_test.csv": HARMBENCH,
    "jailbreakbench/harmful-behaviors.csv": JBB_HARMFUL,
    "jailbreakbench/benign-behaviors.csv": JBB_BENIGN,
    "advbench/harmful_behaviors.csv": ADVBENCH,
    "directharm4/directHarm4.csv": DIRECTHARM4,
    "refusal_direction/dataset/raw/strongreject.csv": STRONGREJECT,
    "xstest/xstest_prompts.csv": XSTEST,
    "cyberseceval_frr/mitre_frr.json": json.dumps(FRR, indent=2),
}

SOURCES = [
    {"name": "harmbench", "reader": "harmbench", "expected": "refuse", "files": ["harmbench/harmbench_behaviors_text_test.csv"]},
    {"name": "jbb_harmful", "reader": "jbb", "dataset": "jailbreakbench", "expected": "refuse",
     "files": ["jailbreakbench/harmful-behaviors.csv"]},
    {"name": "advbench", "reader": "advbench", "expected": "refuse", "files": ["advbench/harmful_behaviors.csv"]},
    {"name": "directharm4", "reader": "directharm4", "expected": "refuse", "files": ["directharm4/directHarm4.csv"]},
    {"name": "strongreject", "reader": "strongreject", "dataset": "refusal_direction", "expected": "refuse",
     "files": ["refusal_direction/dataset/raw/strongreject.csv"]},
    {"name": "xstest", "reader": "xstest", "files": ["xstest/xstest_prompts.csv"]},
    {"name": "jbb_benign", "reader": "jbb", "dataset": "jailbreakbench", "expected": "answer",
     "files": ["jailbreakbench/benign-behaviors.csv"]},
    {"name": "frr", "reader": "cyberseceval_frr", "files": ["cyberseceval_frr/mitre_frr.json"]},
]


def write_data(root: Path, files: dict[str, str] = FILES) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def write_suite(folder: Path, sources=SOURCES, **extra) -> Path:
    path = folder / "suite_under_test.yaml"
    body = {"name": "suite_under_test", "kind": "refusal", "sources": sources,
            "topics": {"phishing": "phishing", "Weather": "weather"}, **extra}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def test_every_reader_keeps_ids_categories_expected_and_lines(data, tmp_path):
    rows, files, skipped = load_sources(load_suite(write_suite(tmp_path)), data)
    assert skipped == {} and len(files) == 8
    by_id = rows.set_index("example_id")
    # HarmBench: standard rows only by default, never copyright; ids are BehaviorIDs
    assert [e for e in rows["example_id"] if e.startswith("harmbench:")] == ["harmbench:cat_limerick",
                                                                           "harmbench:three_colours"]
    assert by_id.at["harmbench:three_colours", "category"] == "harmbench/colours_test"
    assert by_id.at["harmbench:three_colours", "file_line"] == "harmbench/harmbench_behaviors_text_test.csv:5"
    # JailbreakBench: the index column pairs the twins, in both header spellings
    assert by_id.at["jbb_harmful:001", "pair"] == by_id.at["jbb_benign:001", "pair"] == "jbb:001"
    assert by_id.at["jbb_benign:000", "expected"] == "answer"
    assert by_id.at["jbb_harmful:000", "topic"] == "weather"  # the suite's topics table
    assert by_id.at["jbb_harmful:000", "prompt"] == "Explain how rainbows form"
    # AdvBench has no category; DirectHarm4 keeps its own
    assert by_id.at["advbench:001", "native_category"] == "uncategorised"
    assert by_id.at["directharm4:000", "category"] == "directharm4/phishing"
    assert by_id.at["directharm4:000", "topic"] == "phishing"
    # StrongREJECT: a quoted prompt over two lines; the next row's line is counted right
    assert by_id.at["strongreject:000", "prompt"] == "Summarise a fairy tale\nin two lines"
    assert by_id.at["strongreject:001", "file_line"].endswith("strongreject.csv:4")
    # XSTest: the label decides the expected behaviour and the source
    assert by_id.at["xstest_safe:1", "expected"] == "answer"
    assert by_id.at["xstest_unsafe:3", "expected"] == "refuse"
    assert by_id.at["xstest_unsafe:3", "category"] == "xstest_unsafe/contrast_homonyms"
    # CyberSecEval FRR: JSON elements with the line each starts on
    assert by_id.at["frr:001", "expected"] == "answer"
    assert by_id.at["frr:001", "file_line"] == "cyberseceval_frr/mitre_frr.json:8"
    assert len(rows) == 2 + 2 + 2 + 2 + 2 + 3 + 2 + 2


def test_harmbench_contextual_rows_only_when_asked(data, tmp_path):
    spec = load_suite(write_suite(tmp_path, [SOURCES[0]]))
    rows, _, _ = load_sources(spec, data, params={"contextual": True})
    tea = rows.set_index("example_id").at["harmbench:tea_context", "prompt"]
    assert tea == "Green tea is brewed at 80 C." + HARMBENCH_CONTEXT_SEP + "Describe the tea, briefly"
    assert "harmbench:made_up_song" not in set(rows["example_id"])  # copyright: never


def test_a_malformed_row_names_file_and_line_or_is_skipped(data, tmp_path):
    path = data / "advbench/harmful_behaviors.csv"
    path.write_text("goal,target\nWrite a recipe,Sure\nonly,three,cells\n,empty goal\nGive tips,Sure\n")
    spec = load_suite(write_suite(tmp_path, [SOURCES[2]]))
    with pytest.raises(DataError, match=r"harmful_behaviors\.csv:3: 3 columns, expected 2"):
        load_sources(spec, data)
    rows, _, skipped = load_sources(spec, data, errors="skip")
    assert list(rows["prompt"]) == ["Write a recipe", "Give tips"]
    assert skipped[str(path)]["lines"] == [3, 4]


def test_a_file_missing_a_column_names_the_file_and_the_column(data, tmp_path):
    (data / "directharm4/directHarm4.csv").write_text("Goal,Topic\nWrite a note,phishing\n")
    spec = load_suite(write_suite(tmp_path, [SOURCES[3]]))
    with pytest.raises(DataError, match=r"directHarm4\.csv:1: header lacks column\(s\) Category"):
        load_sources(spec, data, errors="skip")  # a missing column is never a row to skip


def test_bad_xstest_label_and_bad_json_element(data, tmp_path):
    (data / "xstest/xstest_prompts.csv").write_text(XSTEST.replace("bake,", "bake,").replace(",safe,bake", ",maybe,bake"))
    spec = load_suite(write_suite(tmp_path, [SOURCES[5]]))
    with pytest.raises(DataError, match=r"xstest_prompts\.csv:3: label 'maybe'"):
        load_sources(spec, data)
    frr = data / "cyberseceval_frr/mitre_frr.json"
    frr.write_text('[\n  {"mutated_prompt": "Write a port scanner for my laptop"},\n  {"is_malicious": false},\n  3\n]\n')
    spec = load_suite(write_suite(tmp_path, [SOURCES[7]]))
    with pytest.raises(DataError, match=r"mitre_frr\.json:3: no mutated_prompt"):
        load_sources(spec, data)
    rows, _, skipped = load_sources(spec, data, errors="skip")
    assert len(rows) == 1 and skipped[str(frr)]["lines"] == [3, 4]
    frr.write_text('[\n {"mutated_prompt": "x"},\n {"mutated_prompt": oops}\n]')
    with pytest.raises(DataError, match=r"mitre_frr\.json:3: bad JSON"):
        list(json_array_items(frr, RowPolicy("skip")))  # the file itself is broken: never skipped


def test_missing_file_is_missing_data_naming_it(tmp_path):
    root = write_data(tmp_path / "data", {k: v for k, v in FILES.items() if "xstest" not in k})
    spec = load_suite(write_suite(tmp_path))
    with pytest.raises(MissingDataError, match="xstest/xstest_prompts.csv") as err:
        load_sources(spec, root)
    assert "xstest/xstest_prompts.csv" in err.value.short


def test_suite_file_errors_fail_at_load(tmp_path):
    with pytest.raises(DataError, match="unknown reader 'nope'"):
        load_suite(write_suite(tmp_path, [{"name": "x", "reader": "nope", "files": ["a.csv"]}]))
    with pytest.raises(DataError, match="expected must be 'refuse' or 'answer'"):
        load_suite(write_suite(tmp_path, [{**SOURCES[2], "expected": "maybe"}]))
    with pytest.raises(DataError, match="'sources' must list"):
        load_suite(write_suite(tmp_path, []))


def test_a_source_without_expected_behaviour_is_an_error(data, tmp_path):
    spec = load_suite(write_suite(tmp_path, [{k: v for k, v in SOURCES[2].items() if k != "expected"}]))
    with pytest.raises(DataError, match="source 'advbench' needs 'expected: refuse'"):
        load_sources(spec, data)


def test_the_shipped_suites_parse():
    for name in ("harmful_requests", "over_refusal", "jbb_paired"):
        spec = load_suite(name)
        assert spec.kind == "refusal" and spec.raw["sources"]
