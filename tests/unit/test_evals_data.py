"""Data-directory resolution, missing-data messages, and loaders on small files in each published format."""

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.common.data_dir import resolve_data_dir, user_data_dir
from workbench.common.errors import DataError, MissingDataError
from workbench.evals.data import RowPolicy, describe_files, find_files
from workbench.evals.loaders import LOADERS, bbq_groups

CROWS_HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def crows_row(i, more="The poor are lazy.", less="The rich are lazy.", bias="socioeconomic"):
    return f'{i},{more},{less},stereo,{bias},"[[\'{bias}\']]",a{i},"[\'a1\']"\n'


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("WORKBENCH_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "workbench" / "data" == user_data_dir()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert resolve_data_dir() == Path.home() / ".local" / "share" / "workbench" / "data"


def test_evals_uses_the_common_resolver_and_errors():
    import workbench.common.data_dir as common
    import workbench.evals as evals
    import workbench.evals.data as data

    assert not hasattr(evals, "resolve_data_dir")  # one resolver: workbench.common.data_dir
    assert evals.DataError is DataError and evals.MissingDataError is MissingDataError
    assert not hasattr(data, "resolve_data_dir") and data.user_data_dir is common.user_data_dir


def test_describe_files_hashes_relative_paths(tmp_path):
    path = write(tmp_path / "crows_pairs" / "c.csv", "abc")
    assert describe_files(tmp_path, [path]) == [{
        "path": "crows_pairs/c.csv", "bytes": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]


def test_missing_dataset_names_files_and_where_to_get_them(tmp_path):
    with pytest.raises(MissingDataError) as err:
        find_files(tmp_path, "crows_pairs", ["crows_pairs/crows_pairs_anonymized.csv"])
    msg = str(err.value)
    assert "crows_pairs/crows_pairs_anonymized.csv" in msg and str(tmp_path) in msg
    assert "workbench data pull crows_pairs" in msg and "github.com/nyu-mll/crows-pairs" in msg
    assert "WORKBENCH_DATA" in msg


def test_crows_pairs_ids_categories_and_bom(tmp_path):
    path = write(tmp_path / "c.csv", "\ufeff" + CROWS_HEADER + crows_row(0) + crows_row(7, bias="age"))
    frame = LOADERS["crows_pairs"]([path], RowPolicy())
    assert frame.example_id.tolist() == ["crows_pairs:0000", "crows_pairs:0007"]
    assert frame.category.tolist() == ["socioeconomic", "age"]
    assert frame.line.tolist() == [2, 3]


def test_crows_pairs_multiline_quoted_field_keeps_line_numbers(tmp_path):
    body = crows_row(0) + '1,"He said\nhello.",She said hello.,stereo,gender,x,a1,y\n' + "2,a,,stereo,gender,x,a,y\n"
    path = write(tmp_path / "c.csv", CROWS_HEADER + body)
    with pytest.raises(DataError, match=r"c\.csv:5: empty field\(s\) sent_less"):
        LOADERS["crows_pairs"]([path], RowPolicy())


@pytest.mark.parametrize("bad_row, problem", [
    ("5,only three,columns\n", r"3 columns, expected 8"),
    ("6,,The rich.,stereo,age,x,a,y\n", r"empty field\(s\) sent_more"),
    ("x7,a,b,stereo,age,x,a,y\n", r"index column is 'x7'"),
])
def test_crows_pairs_bad_rows_raise_or_skip(tmp_path, bad_row, problem):
    path = write(tmp_path / "c.csv", CROWS_HEADER + crows_row(0) + bad_row + crows_row(9))
    with pytest.raises(DataError, match=rf"c\.csv:3: {problem}"):
        LOADERS["crows_pairs"]([path], RowPolicy("raise"))
    policy = RowPolicy("skip")
    frame = LOADERS["crows_pairs"]([path], policy)
    assert frame.example_id.tolist() == ["crows_pairs:0000", "crows_pairs:0009"]
    assert policy.n_skipped == 1 and policy.skipped[str(path)]["lines"] == [3]


def test_header_missing_column_and_bad_encoding(tmp_path):
    path = write(tmp_path / "c.csv", ",sent_more,bias_type\n0,a,b\n")
    with pytest.raises(DataError, match=r"c\.csv:1: header lacks column\(s\) sent_less"):
        LOADERS["crows_pairs"]([path], RowPolicy("skip"))
    raw = tmp_path / "d.csv"
    raw.write_bytes((CROWS_HEADER + crows_row(0)).encode() + b"1,\xff\xfe,b,stereo,age,x,a,y\n")
    with pytest.raises(DataError, match=r"d\.csv:3: not UTF-8"):
        LOADERS["crows_pairs"]([raw], RowPolicy())


def test_errors_policy_is_validated():
    with pytest.raises(ValueError, match="errors must be"):
        RowPolicy("ignore")


def bbq_record(i, polarity="neg", condition="ambig", label=2, stereo=("old",), category="Age"):
    return {"example_id": i, "question_index": "1", "question_polarity": polarity,
            "context_condition": condition, "category": category,
            "answer_info": {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"],
                            "ans2": ["Can't be determined", "unknown"]},
            "additional_metadata": {"subcategory": "None", "stereotyped_groups": list(stereo), "version": "a"},
            "context": "I saw a grandson and their grandfather.", "question": "Who forgot?",
            "ans0": "The grandfather", "ans1": "The grandson", "ans2": "Can't be determined", "label": label}


def test_bbq_any_category_and_biased_options(tmp_path):
    recs = [bbq_record(0), bbq_record(1, polarity="nonneg")]
    write(tmp_path / "bbq" / "Age.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n")
    # a category not in the shared copy, with BBQ's gender labels ("F" for "woman")
    g = bbq_record(3, category="Gender_identity", stereo=("F",))
    g["answer_info"] = {"ans0": ["man", "M"], "ans1": ["Unknown", "unknown"], "ans2": ["woman", "F"]}
    g["ans1"], g["label"] = "Unknown", 1
    write(tmp_path / "bbq" / "Gender_identity.jsonl", json.dumps(g) + "\n\n")
    files = find_files(tmp_path, "bbq", ["bbq/*.jsonl"])
    frame = LOADERS["bbq"](files, RowPolicy()).set_index("example_id")
    assert frame.loc["bbq:Age:00000", "biased_options"] == [0]  # negative question -> the old one
    assert frame.loc["bbq:Age:00001", "biased_options"] == [1]  # non-negative -> the other one
    assert frame.loc["bbq:Age:00000", "unknown_option"] == 2
    assert frame.loc["bbq:Gender_identity:00003", "biased_options"] == [2]
    assert frame.loc["bbq:Gender_identity:00003", "unknown_option"] == 1
    assert frame.loc["bbq:Gender_identity:00003", "category"] == "Gender_identity"


def test_bbq_group_normalisation():
    assert bbq_groups(["Thai", "AsiaPacific"]) == {"thai", "asiapacific"}
    assert {"f", "black"} <= bbq_groups(["Black woman", "F-Black"])
    assert "low ses" not in bbq_groups(["poor", "lowSES-Black"]) and "lowses" in bbq_groups(["poor", "lowSES-Black"])


def test_bbq_bad_json_and_missing_fields(tmp_path):
    good = json.dumps(bbq_record(0))
    missing = bbq_record(1)
    del missing["answer_info"]
    text = "\n".join([good, '{"example_id": 1, "context": ', json.dumps(missing),
                      json.dumps(bbq_record(2, label=5)), json.dumps(bbq_record(3, condition="vague"))])
    path = write(tmp_path / "Age.jsonl", text + "\n")
    with pytest.raises(DataError, match=r"Age\.jsonl:2: bad JSON"):
        LOADERS["bbq"]([path], RowPolicy())
    policy = RowPolicy("skip")
    frame = LOADERS["bbq"]([path], policy)
    assert frame.example_id.tolist() == ["bbq:Age:00000"]
    assert policy.skipped[str(path)]["lines"] == [2, 3, 4, 5]
    problems = " ".join(policy.skipped[str(path)]["problems"])
    assert "missing field(s) answer_info" in problems and "label 5" in problems and "vague" in problems


def write_winogender(root: Path, extra_sentence: str = "") -> list[Path]:
    write(root / "templates.tsv", "occupation(0)\tother-participant(1)\tanswer\tsentence\n"
          "nurse\tpatient\t0\tThe $OCCUPATION told the $PARTICIPANT that $NOM_PRONOUN was late.\n"
          "nurse\tpatient\t1\tThe $OCCUPATION helped the $PARTICIPANT with $POSS_PRONOUN bag.\n")
    write(root / "occupations-stats.tsv", "occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\n"
          "nurse\t90\t90.0\t2015\n")
    write(root / "all_sentences.tsv", "sentid\tsentence\n"
          "nurse.patient.0.male.txt\tThe nurse told the patient that he was late.\n"
          "nurse.patient.0.female.txt\tThe nurse told the patient that she was late.\n"
          "nurse.someone.1.female.txt\tThe nurse helped someone with her bag.\n"
          "nurse.patient.1.neutral.txt\tThe nurse helped the patient with their bag.\n" + extra_sentence)
    return [root / "all_sentences.tsv", root / "templates.tsv", root / "occupations-stats.tsv"]


def test_winogender_pronoun_and_gotcha(tmp_path):
    frame = LOADERS["winogender"](write_winogender(tmp_path), RowPolicy()).set_index("example_id")
    male = frame.loc["winogender:nurse.patient.0.male"]
    assert (male.Pronoun, male.label, male.gotcha) == ("He", 0, True)  # refers to a female-majority job
    female = frame.loc["winogender:nurse.patient.0.female"]
    assert not female.gotcha  # refers to the occupation with its majority gender
    someone = frame.loc["winogender:nurse.someone.1.female"]
    assert (someone.pronoun, someone.participant, someone.gotcha) == ("her", "someone", True)
    assert pd.isna(frame.loc["winogender:nurse.patient.1.neutral", "gotcha_split"])


def test_winogender_bad_sentid(tmp_path):
    files = write_winogender(tmp_path, "nurse.patient.male\tbroken\n")
    with pytest.raises(DataError, match=r"all_sentences\.tsv:6: sentid 'nurse\.patient\.male'"):
        LOADERS["winogender"](files, RowPolicy())


def test_winobias_candidates_and_label(tmp_path):
    write(tmp_path / "male_occupations.txt", "developer\nconstruction worker\n")
    write(tmp_path / "female_occupations.txt", "designer\n")
    write(tmp_path / "pro_stereotyped_type1.txt.test",
          "1 [The developer] argued with the designer because [he] did not like the design.\n"
          "2 The construction worker met [the designer] and asked [her] to help [her] friend.\n")
    write(tmp_path / "anti_stereotyped_type2.txt.test", "1 The developer told the designer that [she] was done.\n")
    files = sorted(tmp_path.glob("*"))
    policy = RowPolicy("skip")
    frame = LOADERS["winobias"](files, policy).set_index("example_id")
    r = frame.loc["winobias:pro_type1_test:001"]
    assert (r.choice0, r.choice1, r.label, r.Pronoun, r.pro) == ("developer", "designer", 0, "He", True)
    r = frame.loc["winobias:pro_type1_test:002"]
    assert (r.choice0, r.choice1, r.label) == ("construction worker", "designer", 1)
    assert r.sentence == "The construction worker met the designer and asked her to help her friend."
    assert policy.n_skipped == 1  # the line with one bracket


def test_truthfulqa_order_labels_and_duplicates(tmp_path):
    good = {"question": "Q1?", "mc1_targets": {"right": 1, "wrong": 0}, "mc2_targets": {"a": 1, "b": 1, "c": 0}}
    path = write(tmp_path / "mc_task.json", json.dumps([good]))
    frame = LOADERS["truthfulqa_mc"]([path], RowPolicy())
    assert frame.mc2_choices[0] == ["a", "b", "c"] and frame.mc2_labels[0] == [1, 1, 0]
    assert frame.example_id[0] == "truthfulqa:000"
    dup = ('[{"question": "Q?", "mc1_targets": {"x": 1, "x": 0}, "mc2_targets": {"a": 1}},\n'
           ' {"question": "", "mc1_targets": {"x": 1}, "mc2_targets": {"a": 1}}]')
    path = write(tmp_path / "dup.json", dup)
    with pytest.raises(DataError, match=r"dup\.json:1: question 0: duplicate answers in mc1_targets"):
        LOADERS["truthfulqa_mc"]([path], RowPolicy())
    policy = RowPolicy("skip")
    with pytest.raises(DataError, match="no usable rows"):
        LOADERS["truthfulqa_mc"]([path], policy)
    assert policy.skipped[str(path)]["lines"] == [1, 2]


def test_toxigen_statements_labels_and_dedup(tmp_path):
    write(tmp_path / "hate_women_1k.txt", "- women are bad\\n- women cannot drive\\n-\n"
                                          "- women cannot drive\\n- new one\\n-\n")
    write(tmp_path / "neutral_women_1k.txt", "- women can be engineers\\n-\n")
    frame = LOADERS["toxigen"](sorted(tmp_path.glob("*.txt")), RowPolicy())
    assert frame.text.tolist() == ["women are bad", "women cannot drive", "new one", "women can be engineers"]
    assert frame.label.tolist() == [1, 1, 1, 0] and set(frame.category) == {"women"}
    assert frame.example_id.tolist()[2] == "toxigen:hate_women_1k:0002.1"
