"""Readers for the published benchmark files, one per dataset.

Each loader takes the dataset's files (found by :func:`workbench.evals.data.find_files`) and a
:class:`~workbench.evals.data.RowPolicy`, and returns a DataFrame with one row per example:
``example_id`` (stable: the file's own index, record id or line number), ``category``, and the
dataset's fields. A malformed row (wrong number of columns, bad JSON, a missing or empty field)
is reported with its file and line, or skipped and counted under ``errors="skip"``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from workbench.common.errors import DataError
from workbench.evals.data import RowPolicy, read_text

LOADERS: dict[str, Callable[..., pd.DataFrame]] = {}


def loader(name: str):
    def register(fn):
        LOADERS[name] = fn
        return fn

    return register


def _frame(rows: list[dict], path_hint: str) -> pd.DataFrame:
    if not rows:
        raise DataError(f"{path_hint}: no usable rows")
    return pd.DataFrame(rows)


def csv_rows(path: Path, policy: RowPolicy, delimiter: str, required: list[str]):
    """``(line, dict)`` per data row of a CSV/TSV file with a header; checks column counts."""
    text = read_text(path, policy)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}:1: empty file (expected a header with {', '.join(required)})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} (found {header})")
    while True:
        first = reader.line_num + 1  # the record starts on the line after the previous one
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            policy.bad(path, first, f"unparseable CSV: {err}")
            continue
        line = first
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            policy.bad(path, line, f"{len(row)} columns, expected {len(header)} ({', '.join(header)})")
            continue
        record = dict(zip(header, row, strict=True))
        empty = [c for c in required if not record[c].strip()]
        if empty:
            policy.bad(path, line, f"empty field(s) {', '.join(empty)}")
            continue
        yield line, record


def _jsonl_rows(path: Path, policy: RowPolicy):
    for line_no, line in enumerate(read_text(path, policy).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            policy.bad(path, line_no, f"bad JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(record, dict):
            policy.bad(path, line_no, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield line_no, record


@loader("crows_pairs")
def load_crows_pairs(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """CrowS-Pairs ``crows_pairs_anonymized.csv``: id from the file's unnamed index column."""
    path = files[0]
    rows = []
    for line, r in csv_rows(path, policy, ",", ["sent_more", "sent_less", "stereo_antistereo", "bias_type"]):
        index = r.get("", str(len(rows)))
        if not index.strip().isdigit():
            policy.bad(path, line, f"index column is {index!r}, expected an integer")
            continue
        rows.append({
            "example_id": f"crows_pairs:{int(index):04d}",
            "category": r["bias_type"].strip(),
            "sent_more": r["sent_more"],
            "sent_less": r["sent_less"],
            "bias_type": r["bias_type"].strip(),
            "stereo_antistereo": r["stereo_antistereo"].strip(),
            "line": line,
        })
    return _frame(rows, str(path))


_BBQ_KEYS = ("example_id", "question_polarity", "context_condition", "category", "answer_info",
             "additional_metadata", "context", "question", "ans0", "ans1", "ans2", "label")


def bbq_groups(info: list) -> set[str]:
    """The social-group labels of one BBQ answer (``answer_info["ansK"]``), normalised.

    Both entries count (the name, e.g. "Thai", and the group, e.g. "AsiaPacific"), because
    ``stereotyped_groups`` uses either. Intersectional labels ("F-Black", "lowSES-African")
    split into their parts, and gendered words map to BBQ's "F"/"M", as in
    lm-evaluation-harness ``bbq/utils.py::_process_groups_in_answers``.

    >>> sorted(bbq_groups(["grandfather", "old"]))
    ['grandfather', 'old']
    >>> sorted(bbq_groups(["woman", "F-Black"]))
    ['black', 'f', 'woman']
    """
    groups: set[str] = set()
    for entry in info:
        text = str(entry)
        text = re.sub(r"\b(M|F|lowSES|highSES)-", r"\1_", text)
        for part in text.split("_"):
            low = part.strip().lower()
            if not low:
                continue
            groups.add(low)
            if re.search(r"\b(woman|women|girl|lady)\b", low):
                groups.add("f")
            elif re.search(r"\b(man|men|boy|gentleman)\b", low):
                groups.add("m")
    return groups


@loader("bbq")
def load_bbq(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """BBQ ``<Category>.jsonl`` files, any categories; ``biased``/``unknown`` option indices.

    For each option: ``unknown`` if its ``answer_info`` group is "unknown"; ``biased`` (Parrish
    et al. 2022, p. 6) if, for a negative question, the option belongs to a stereotyped group
    (``additional_metadata.stereotyped_groups``), or, for a non-negative question, it is a
    non-unknown option outside those groups.
    """
    rows = []
    for path in files:
        for line, r in _jsonl_rows(path, policy):
            missing = [k for k in _BBQ_KEYS if k not in r]
            if missing:
                policy.bad(path, line, f"missing field(s) {', '.join(missing)}")
                continue
            answers = [r["ans0"], r["ans1"], r["ans2"]]
            info = r["answer_info"]
            stereo = (r["additional_metadata"] or {}).get("stereotyped_groups")
            problem = None
            if any(not isinstance(a, str) or not a.strip() for a in answers) or not str(r["context"]).strip():
                problem = "empty context or answer"
            elif r["label"] not in (0, 1, 2):
                problem = f"label {r['label']!r} is not 0, 1 or 2"
            elif r["context_condition"] not in ("ambig", "disambig"):
                problem = f"context_condition {r['context_condition']!r} is not ambig/disambig"
            elif r["question_polarity"] not in ("neg", "nonneg"):
                problem = f"question_polarity {r['question_polarity']!r} is not neg/nonneg"
            elif not isinstance(info, dict) or any(not isinstance(info.get(f"ans{i}"), list) for i in range(3)):
                problem = "answer_info must map ans0..ans2 to lists"
            elif not isinstance(stereo, list):
                problem = "additional_metadata.stereotyped_groups must be a list"
            if problem:
                policy.bad(path, line, problem)
                continue
            stereo_set = {str(g).strip().lower() for g in stereo}
            unknown, biased = [], []
            for i in range(3):
                groups = bbq_groups(info[f"ans{i}"])
                is_unknown = bool(info[f"ans{i}"]) and str(info[f"ans{i}"][-1]).strip().lower() == "unknown"
                in_stereo = bool(groups & stereo_set)
                if is_unknown:
                    unknown.append(i)
                elif (r["question_polarity"] == "neg") == in_stereo:
                    biased.append(i)
            if len(unknown) != 1:
                policy.bad(path, line, f"expected exactly one 'unknown' answer in answer_info, found {len(unknown)}")
                continue
            category = str(r["category"]).strip() or path.stem
            rows.append({
                "example_id": f"bbq:{path.stem}:{int(r['example_id']):05d}",
                "category": category,
                "context": r["context"], "question": r["question"],
                "ans0": answers[0], "ans1": answers[1], "ans2": answers[2],
                "label": int(r["label"]),
                "context_condition": r["context_condition"],
                "question_polarity": r["question_polarity"],
                "unknown_option": unknown[0],
                "biased_options": biased,
                "line": line,
            })
    return _frame(rows, str(files[0].parent))


_PRONOUNS = {  # WinoGender template slots -> pronoun by gender (Rudinger et al. 2018)
    "$NOM_PRONOUN": {"male": "he", "female": "she", "neutral": "they"},
    "$POSS_PRONOUN": {"male": "his", "female": "her", "neutral": "their"},
    "$ACC_PRONOUN": {"male": "him", "female": "her", "neutral": "them"},
}


@loader("winogender")
def load_winogender(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """WinoGender ``all_sentences.tsv`` with ``templates.tsv`` and ``occupations-stats.tsv``.

    ``sentid`` is ``occupation.participant.answer.gender.txt`` (answer 0 = the occupation,
    1 = the participant). The pronoun comes from the template's slot. ``gotcha`` (Rudinger et
    al. 2018, sec. 3): the pronoun's gender is not the occupation's majority gender in the
    U.S. Bureau of Labor Statistics figures when the pronoun refers to the occupation, or is
    that majority gender when it refers to the participant; i.e. the stereotype points to the
    wrong answer. Only male/female pronouns can be gotcha; neutral ones have ``gotcha`` None.
    """
    by_name = {p.name: p for p in files}
    sent_path = by_name["all_sentences.tsv"]
    # Keyed by (occupation, answer): the "someone" sentences reuse the named participant's template.
    slots: dict[tuple[str, int], str] = {}
    tpl_path = by_name["templates.tsv"]
    text = read_text(tpl_path, policy).splitlines()
    for line_no, line in enumerate(text[1:], 2):
        cells = line.split("\t")
        if not line.strip():
            continue
        if len(cells) != 4:
            policy.bad(tpl_path, line_no, f"{len(cells)} columns, expected 4")
            continue
        slot = next((s for s in _PRONOUNS if s in cells[3]), None)
        if slot is None or not cells[2].strip().isdigit():
            policy.bad(tpl_path, line_no, "no pronoun slot or non-integer answer")
            continue
        slots[(cells[0], int(cells[2]))] = slot
    female: dict[str, float] = {}
    stats_path = by_name["occupations-stats.tsv"]
    for line, r in csv_rows(stats_path, policy, "\t", ["occupation", "bls_pct_female"]):
        try:
            female[r["occupation"]] = float(r["bls_pct_female"])
        except ValueError:
            policy.bad(stats_path, line, f"bls_pct_female {r['bls_pct_female']!r} is not a number")
    rows = []
    for line, r in csv_rows(sent_path, policy, "\t", ["sentid", "sentence"]):
        parts = r["sentid"].split(".")
        if len(parts) != 5 or parts[2] not in ("0", "1") or parts[3] not in ("male", "female", "neutral"):
            policy.bad(sent_path, line, f"sentid {r['sentid']!r} is not occupation.participant.answer.gender.txt")
            continue
        occupation, participant, answer, gender = parts[0], parts[1], int(parts[2]), parts[3]
        slot = slots.get((occupation, answer))
        if slot is None or occupation not in female:
            policy.bad(sent_path, line, f"no template / occupation statistics for {r['sentid']!r}")
            continue
        majority = "female" if female[occupation] > 50 else "male"
        gotcha = None
        if gender != "neutral":
            gotcha = (gender != majority) if answer == 0 else (gender == majority)
        pronoun = _PRONOUNS[slot][gender]
        rows.append({
            "example_id": f"winogender:{r['sentid'].removesuffix('.txt')}",
            "category": gender,
            "sentence": r["sentence"], "pronoun": pronoun, "Pronoun": pronoun.capitalize(),
            "occupation": occupation, "participant": participant,
            "label": answer, "gender": gender,
            "gotcha": gotcha,
            "gotcha_split": None if gotcha is None else ("gotcha" if gotcha else "not_gotcha"),
            "bls_pct_female": female[occupation],
            "line": line,
        })
    return _frame(rows, str(sent_path))


_WINOBIAS_LINE = re.compile(r"^\s*(\d+)\s+(.*\S)\s*$")


@loader("winobias")
def load_winobias(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """WinoBias ``{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`` with the occupation lists.

    Each line is ``N sentence`` with the referent bracketed first, then the pronoun (some
    lines bracket a second pronoun of the same referent too). The two
    candidates are the two occupations (from ``{male,female}_occupations.txt``) mentioned in
    the sentence, in order of appearance; the label is the bracketed one.
    """
    occupations: list[str] = []
    data_files = []
    for p in files:
        if p.name in ("male_occupations.txt", "female_occupations.txt"):
            occupations += [w.strip().lower() for w in read_text(p, policy).splitlines() if w.strip()]
        else:
            data_files.append(p)
    # Longest first so "construction worker" wins over "worker"; optional plural "s".
    occ_re = re.compile(r"\b(" + "|".join(re.escape(o) for o in sorted(set(occupations), key=len, reverse=True))
                        + r")s?\b", re.IGNORECASE)
    rows = []
    for path in data_files:
        m = re.match(r"(pro|anti)_stereotyped_(type[12])\.txt\.(\w+)$", path.name)
        if not m:
            raise DataError(f"{path}: not a WinoBias file name ({{pro,anti}}_stereotyped_type{{1,2}}.txt.SPLIT)")
        stereotype, kind, split = m.groups()
        for line_no, line in enumerate(read_text(path, policy).splitlines(), 1):
            if not line.strip():
                continue
            mm = _WINOBIAS_LINE.match(line)
            brackets = re.findall(r"\[([^\]]+)\]", line)
            if not mm or len(brackets) < 2:
                policy.bad(path, line_no, "expected 'N sentence' with a [bracketed] referent and pronoun")
                continue
            sentence = re.sub(r"\s+", " ", mm.group(2).replace("[", "").replace("]", "")).strip()
            referent, pronoun = brackets[:2]
            ref_occ = occ_re.search(referent)
            mentions = [x.group(1).lower() for x in occ_re.finditer(sentence)]
            distinct = list(dict.fromkeys(mentions))
            if ref_occ is None or len(distinct) != 2 or ref_occ.group(1).lower() not in distinct:
                policy.bad(path, line_no, f"cannot find two occupations with the referent among them ({distinct})")
                continue
            rows.append({
                "example_id": f"winobias:{stereotype}_{kind}_{split}:{int(mm.group(1)):03d}",
                "category": kind,
                "sentence": sentence, "pronoun": pronoun.strip(), "Pronoun": pronoun.strip().capitalize(),
                "choice0": distinct[0], "choice1": distinct[1],
                "label": distinct.index(ref_occ.group(1).lower()),
                "stereotype": stereotype, "pro": stereotype == "pro", "type": kind, "split": split,
                "line": line_no,
            })
    return _frame(rows, str(data_files[0].parent if data_files else "winobias"))


@loader("truthfulqa_mc")
def load_truthfulqa_mc(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """TruthfulQA ``mc_task.json``: answers in file order with their 0/1 labels (MC1 and MC2)."""
    path = files[0]
    text = read_text(path, policy)
    try:
        # Keep duplicate answer keys visible instead of letting json collapse them.
        records = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: bad JSON: {err.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}:1: expected a JSON list of questions")
    # Line of each question, for error messages: the n-th '"question":' key.
    q_lines = [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r'"question"\s*:', text)]
    rows = []
    for i, pairs in enumerate(records):
        line = q_lines[i] if i < len(q_lines) else 0
        rec = dict(pairs) if isinstance(pairs, list) else None
        problem = None
        if rec is None or not isinstance(rec.get("question"), str) or not rec["question"].strip():
            problem = "missing or empty question"
        else:
            for key in ("mc1_targets", "mc2_targets"):
                targets = rec.get(key)
                if not isinstance(targets, list) or not targets:
                    problem = f"missing or empty {key}"
                elif len({a for a, _ in targets}) != len(targets):
                    problem = f"duplicate answers in {key}"
                elif any(v not in (0, 1) for _, v in targets) or not any(v == 1 for _, v in targets):
                    problem = f"{key} labels must be 0/1 with at least one 1"
                elif any(not str(a).strip() for a, _ in targets):
                    problem = f"empty answer in {key}"
                if problem:
                    break
        if problem:
            policy.bad(path, line, f"question {i}: {problem}")
            continue
        rows.append({
            "example_id": f"truthfulqa:{i:03d}",
            "category": "",
            "question": rec["question"].strip(),
            "mc1_choices": [a for a, _ in rec["mc1_targets"]],
            "mc1_labels": [int(v) for _, v in rec["mc1_targets"]],
            "mc2_choices": [a for a, _ in rec["mc2_targets"]],
            "mc2_labels": [int(v) for _, v in rec["mc2_targets"]],
            "line": line,
        })
    return _frame(rows, str(path))


def split_toxigen_line(line: str) -> list[str]:
    """The statements of one ToxiGen prompt line (``- a\\n- b\\n-`` with literal ``\\n``).

    >>> split_toxigen_line(r"- first one\\n- second\\n-")
    ['first one', 'second']
    """
    out = []
    for part in line.split("\\n"):
        part = part.strip()
        if part.startswith("-"):
            part = part[1:].strip()
        if part:
            out.append(part)
    return out


@loader("toxigen")
def load_toxigen(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """ToxiGen ``prompts/{hate,neutral}_<group>_1k.txt``: distinct statements, labelled by file.

    A statement's label is its file's: 1 (hateful) in ``hate_*``, 0 in ``neutral_*`` (the
    prompt files are the curated seed statements of Hartvigsen et al. 2022). Each distinct
    statement is one example, id ``toxigen:<file stem>:<first line>.<position>``.
    """
    rows = []
    for path in files:
        m = re.match(r"(hate|neutral)_(.+?)_1k\.txt$", path.name)
        if not m:
            raise DataError(f"{path}: not a ToxiGen prompt file name ({{hate,neutral}}_<group>_1k.txt)")
        kind, group = m.groups()
        seen: set[str] = set()
        for line_no, line in enumerate(read_text(path, policy).splitlines(), 1):
            if not line.strip():
                continue
            statements = split_toxigen_line(line)
            if not statements:
                policy.bad(path, line_no, "no statement on this line")
                continue
            for k, s in enumerate(statements):
                if s in seen:
                    continue
                seen.add(s)
                rows.append({
                    "example_id": f"toxigen:{path.stem}:{line_no:04d}.{k}",
                    "category": group, "text": s, "label": int(kind == "hate"), "target_group": group,
                    "line": line_no,
                })
    return _frame(rows, str(files[0].parent))


@loader("builtin")
def load_builtin(files: list[Path], policy: RowPolicy) -> pd.DataFrame:
    """A project-written suite's JSONL examples (``evals/data/*.jsonl``): fields as written.

    Each record needs ``id``; the rest (context fields, ``choices``, ``label``, ``category``)
    is whatever the suite's template uses.
    """
    rows = []
    for path in files:
        for line, r in _jsonl_rows(path, policy):
            if "id" not in r or not str(r["id"]).strip():
                policy.bad(path, line, "missing 'id'")
                continue
            rows.append({"example_id": f"{path.stem}:{r['id']}", "category": str(r.get("category", "")),
                         **{k: v for k, v in r.items() if k not in ("id", "category")}, "line": line})
    return _frame(rows, str(files[0]))
