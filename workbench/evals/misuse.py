"""Readers for the misuse and over-refusal prompt sets, one per published format.

A refusal suite file (``kind: refusal``, see :mod:`workbench.evals.refusal`) lists its
``sources``; each names a reader of :data:`READERS`, the files it reads (relative to the data
directory) and, unless the reader knows it per row, the behaviour expected of a model
(``refuse`` or ``answer``)::

    sources:
      - {name: harmbench, reader: harmbench, dataset: harmbench, expected: refuse,
         files: [harmbench/harmbench_behaviors_text_test.csv, harmbench/harmbench_behaviors_text_val.csv]}
      - {name: xstest, reader: xstest, dataset: xstest, files: [xstest/xstest_prompts.csv]}

Every reader keeps its source's own category (HarmBench's ``SemanticCategory``, JailbreakBench's
``Category``, DirectHarm4's ``Category``, StrongREJECT's ``category``, XSTest's ``type``); the
suite's ``topics`` table maps those names onto shared topics (``phishing``, ``malware``,
``disinformation`` ...) so rates can be compared across sources. A malformed row (wrong number
of columns, an empty prompt, bad JSON) names its file and line, or is skipped and counted under
``errors="skip"``; a file without a needed column names the file and the column.

Rows: ``example_id`` (stable: the file's own id or row number), ``source``, ``native_category``,
``category`` (``<source>/<native_category>``), ``topic``, ``expected``, ``prompt``, ``pair`` (the
JailbreakBench topic index, the same for a harmful request and its benign twin, else ``""``) and
``file_line`` (``<file>:<line>``).

>>> from workbench.evals.suites import load_suite
>>> rows, files, skipped = load_sources(load_suite("over_refusal"), data_dir)  # doctest: +SKIP
>>> rows.groupby("source").size()                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from workbench.common.errors import DataError
from workbench.evals.data import RowPolicy, find_files, read_text
from workbench.evals.loaders import csv_rows

EXPECTED = ("refuse", "answer")
COLUMNS = ["example_id", "source", "native_category", "category", "topic", "expected", "prompt", "pair",
           "file_line"]
# HarmBench's contextual rows put the context before the request (HarmBench, `baselines` /
# `eval_utils`: f"{context}\n\n---\n\n{behavior}").
HARMBENCH_CONTEXT_SEP = "\n\n---\n\n"

Reader = Callable[[Path, RowPolicy, dict], Iterator[dict]]
READERS: dict[str, Reader] = {}


def reader(name: str):
    def register(fn):
        READERS[name] = fn
        return fn

    return register


# --- one reader per published format ---------------------------------------------------------


@reader("harmbench")
def read_harmbench(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """HarmBench ``harmbench_behaviors_text_{test,val}.csv``: the standard behaviours.

    Contextual rows (``FunctionalCategory == contextual``) only with ``contextual: true``, their
    prompt being ``ContextString`` + ``"\\n\\n---\\n\\n"`` + ``Behavior``; the copyright rows
    (lyrics and book passages, judged by hashing in HarmBench) never.
    """
    needed = ["Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"]
    for line, r in csv_rows(path, policy, ",", ["Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"]):
        missing = [c for c in needed if c not in r]
        if missing:  # ContextString may be empty but must be a column
            raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        kind = r["FunctionalCategory"].strip()
        if kind == "copyright" or (kind == "contextual" and not params.get("contextual", False)):
            continue
        if kind not in ("standard", "contextual"):
            policy.bad(path, line, f"FunctionalCategory {kind!r} is not standard, contextual or copyright")
            continue
        prompt = r["Behavior"]
        if kind == "contextual":
            if not r["ContextString"].strip():
                policy.bad(path, line, "a contextual behaviour with an empty ContextString")
                continue
            prompt = r["ContextString"] + HARMBENCH_CONTEXT_SEP + r["Behavior"]
        yield {"id": r["BehaviorID"].strip(), "category": r["SemanticCategory"].strip(), "prompt": prompt,
               "line": line}


@reader("jbb")
def read_jbb(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """JailbreakBench ``harmful-behaviors.csv`` (``, Goal, ..., Category``) or ``benign-behaviors.csv``
    (``index, goal, ..., category``): the index column pairs row *i* of one with row *i* of the other."""
    text = read_text(path, policy)
    header = text.splitlines()[0].split(",") if text.strip() else []
    lower = "goal" in header
    goal, category, index = ("goal", "category", "index") if lower else ("Goal", "Category", "")
    for line, r in csv_rows(path, policy, ",", [goal, category]):
        number = r.get(index, "").strip()
        if not number.isdigit():
            policy.bad(path, line, f"index column {index or '(unnamed)'!r} is {number!r}, expected an integer")
            continue
        yield {"id": f"{int(number):03d}", "category": r[category].strip(), "prompt": r[goal],
               "pair": f"jbb:{int(number):03d}", "line": line}


@reader("advbench")
def read_advbench(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """AdvBench ``harmful_behaviors.csv`` (``goal, target``); it has no categories."""
    for n, (line, r) in enumerate(csv_rows(path, policy, ",", ["goal"])):
        yield {"id": f"{n:03d}", "category": "uncategorised", "prompt": r["goal"], "line": line}


@reader("directharm4")
def read_directharm4(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """DirectHarm4 ``directHarm4.csv`` (``Goal, Category``: phishing, malware, drug, disinfo)."""
    for n, (line, r) in enumerate(csv_rows(path, policy, ",", ["Goal", "Category"])):
        yield {"id": f"{n:03d}", "category": r["Category"].strip(), "prompt": r["Goal"], "line": line}


@reader("strongreject")
def read_strongreject(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """StrongREJECT ``strongreject.csv`` (``category, source, forbidden_prompt``), as Arditi et al. staged it."""
    for n, (line, r) in enumerate(csv_rows(path, policy, ",", ["category", "forbidden_prompt"])):
        yield {"id": f"{n:03d}", "category": r["category"].strip(), "prompt": r["forbidden_prompt"], "line": line}


@reader("xstest")
def read_xstest(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """XSTest ``xstest_prompts.csv`` (``id, prompt, type, label``): ``safe`` prompts should be
    answered, ``unsafe`` contrasts refused; the source becomes ``<name>_safe`` / ``<name>_unsafe``."""
    for line, r in csv_rows(path, policy, ",", ["id", "prompt", "type", "label"]):
        label = r["label"].strip()
        if label not in ("safe", "unsafe"):
            policy.bad(path, line, f"label {label!r} is not 'safe' or 'unsafe'")
            continue
        yield {"id": r["id"].strip(), "category": r["type"].strip(), "prompt": r["prompt"], "line": line,
               "expected": "answer" if label == "safe" else "refuse", "suffix": label}


@reader("cyberseceval_frr")
def read_cyberseceval_frr(path: Path, policy: RowPolicy, params: dict) -> Iterator[dict]:
    """CyberSecEval 2 ``mitre_frr.json``: a JSON list of ``{mutated_prompt, is_malicious, attack_type}``;
    ``is_malicious`` false (every published row) means the prompt should be answered."""
    for n, (line, record) in enumerate(json_array_items(path, policy)):
        prompt = record.get("mutated_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            policy.bad(path, line, "no mutated_prompt (expected a CyberSecEval FRR record)")
            continue
        malicious = record.get("is_malicious", False)
        yield {"id": f"{n:03d}", "category": str(record.get("attack_type") or "uncategorised").strip(),
               "prompt": prompt, "line": line, "expected": "refuse" if malicious is True else "answer"}


def json_array_items(path: Path, policy: RowPolicy) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` for each element of a file holding one JSON array of objects.

    Each element's line is where it starts, so a bad element names its line; a file that is
    not a JSON array at all raises :class:`DataError` with the line and column of the fault.
    """
    text = read_text(path, policy)
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(i: int, what: str):
        line = text.count("\n", 0, i) + 1
        raise DataError(f"{path}:{line}: {what} (expected a JSON array of objects)")

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        fail(i, "the file does not start with '['")
    i = skip(i + 1)
    while i < len(text) and text[i] != "]":
        line = text.count("\n", 0, i) + 1
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            fail(err.pos, f"bad JSON: {err.msg}")
        if isinstance(item, dict):
            yield line, item
        else:
            policy.bad(path, line, f"expected a JSON object, got {type(item).__name__}")
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i >= len(text) or text[i] != "]":
            fail(i, "expected ',' or ']' after an element")
    if i >= len(text):
        fail(i, "the array is not closed")


# --- a suite's sources -------------------------------------------------------------------------


def suite_sources(spec) -> list[dict[str, Any]]:
    """The ``sources`` list of a refusal suite file, checked (reader known, files listed, expected valid)."""
    sources = spec.raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise DataError(f"{spec.path}: 'sources' must list the prompt sets (name, reader, files)")
    out = []
    for i, src in enumerate(sources):
        where = f"{spec.path}: sources[{i}]"
        if not isinstance(src, dict) or not {"name", "reader", "files"} <= set(src):
            raise DataError(f"{where}: needs name, reader and files")
        if src["reader"] not in READERS:
            raise DataError(f"{where}: unknown reader {src['reader']!r}; known: {', '.join(sorted(READERS))}")
        if src.get("expected") is not None and src["expected"] not in EXPECTED:
            raise DataError(f"{where}: expected must be 'refuse' or 'answer', not {src['expected']!r}")
        files = src["files"] if isinstance(src["files"], list) else [src["files"]]
        out.append({**src, "files": [str(f) for f in files], "dataset": str(src.get("dataset", src["name"]))})
    return out


def load_sources(spec, data_dir: str | Path, *, errors: str = "raise",
                 params: dict | None = None) -> tuple[pd.DataFrame, list[Path], dict]:
    """Every prompt of a refusal suite's sources: ``(rows, files read, skipped rows per file)``.

    Args:
        spec: a :class:`~workbench.evals.suites.SuiteSpec` with ``sources`` (see the module docstring).
        data_dir: the data directory.
        errors: ``"raise"`` on a malformed row, or ``"skip"`` it and count it.
        params: reader options (``contextual: true`` adds HarmBench's contextual rows).

    Raises:
        MissingDataError: a source's file is not in the data directory (named, with where to get it).
        DataError: a malformed row under ``errors="raise"``, a missing column, a duplicate id.
    """
    root = Path(data_dir)
    policy = RowPolicy(errors)
    topics = {str(k): str(v) for k, v in (spec.raw.get("topics") or {}).items()}
    rows: list[dict] = []
    read: list[Path] = []
    sources = suite_sources(spec)
    found = [find_files(root, src["dataset"], src["files"]) for src in sources]  # every missing file first
    for src, files in zip(sources, found, strict=True):
        for path in files:
            read.append(path)
            rel = path.relative_to(root).as_posix()
            for item in READERS[src["reader"]](path, policy, params or {}):
                rows.append(_row(src, item, rel, topics, path))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    dup = frame["example_id"][frame["example_id"].duplicated()]
    if len(dup):
        raise DataError(f"{spec.path}: example id {dup.iloc[0]!r} occurs twice; give the sources distinct names")
    return frame, read, policy.skipped


def _row(src: dict, item: dict, rel: str, topics: dict[str, str], path: Path) -> dict:
    source = f"{src['name']}_{item['suffix']}" if item.get("suffix") else src["name"]
    expected = item.get("expected") or src.get("expected")
    if expected not in EXPECTED:
        raise DataError(f"{path}: source {src['name']!r} needs 'expected: refuse' or 'expected: answer' in the "
                        "suite file (its reader does not say per row)")
    native = item["category"] or "uncategorised"
    return {"example_id": f"{source}:{item['id']}", "source": source, "native_category": native,
            "category": f"{source}/{native}", "topic": topics.get(native, ""), "expected": expected,
            "prompt": item["prompt"], "pair": item.get("pair", ""), "file_line": f"{rel}:{item['line']}"}
