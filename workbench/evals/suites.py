"""Suite definitions are data: one YAML file per suite under ``evals/``.

A suite file names its dataset files, loader, prompt template, choices and metrics::

    name: winogender
    version: 1
    description: ...
    reference: lm-evaluation-harness `winogender` (doc_to_text / doc_to_choice)
    dataset: winogender                 # data folder, for messages and `workbench data pull`
    loader: winogender                  # a reader in workbench.evals.loaders
    files: [winogender/all_sentences.tsv, ...]   # globs under the data directory
    kind: multiple_choice               # multiple_choice | crows_pairs | bbq | truthfulqa_mc | toxicity
                                        # | refusal (the row of workbench.evals.kinds.KINDS that runs it)
    prompt:
      context: "{sentence} ‘{Pronoun}’ refers to the"   # str.format over the example's fields
      choices: ["{occupation}", "{participant}"]          # or choices_field: a list-valued field
      delimiter: " "                                       # put before each choice (lm-eval's target_delimiter)
    metrics: [acc]                      # names in workbench.evals.scoring.METRICS, or {name, fn}
    by: [gender, gotcha_split]          # sample columns to break metrics down by ("category" rows)

A refusal suite (``kind: refusal``) lists ``sources`` instead of ``files`` (each a reader of
:mod:`workbench.evals.misuse` with its files and expected behaviour), ``expect`` (the behaviour
its ``all`` rates cover), optionally ``topics`` (source category -> shared topic) and
``paired: true`` (twins sharing a pair id); see :mod:`workbench.evals.refusal`.

Built-in suites (``builtin: true``) need no data directory: their examples are in the YAML
itself (``examples:``, or ``templates:`` x ``values:``). Groups of suites are in
``evals/groups.yaml``. Adding a suite variant is one new YAML file, no code.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from workbench.common.errors import DataError
from workbench.evals.kinds import kind_of


def suites_dir() -> Path:
    """The folder with the suite YAML files (``workbench/eval_data`` when installed, else ``evals/``)."""
    installed = resources.files("workbench") / "eval_data"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "evals"


@dataclass
class SuiteSpec:
    """A parsed suite file."""

    name: str
    version: str
    kind: str
    loader: str
    path: Path
    raw: dict[str, Any] = field(repr=False)
    dataset: str = ""
    files: list[str] = field(default_factory=list)
    builtin: bool = False
    prompt: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, str]] = field(default_factory=list)
    by: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def list_suites() -> list[str]:
    """Names of the suites defined in ``evals/`` (groups excluded), sorted.

    >>> "crows_pairs" in list_suites()
    True
    """
    folder = suites_dir()
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "groups")


def load_suite(name_or_path: str | os.PathLike) -> SuiteSpec:
    """Parse a suite by name (``evals/<name>.yaml``) or from a YAML file path.

    >>> load_suite("crows_pairs").metrics[0]["name"]
    'pct_stereotype'
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = suites_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise DataError(f"unknown suite {str(name_or_path)!r}; known: {', '.join(list_suites())} "
                            f"(or groups: {', '.join(list_groups())})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping at the top level")

    def need(key, kind=str):
        if key not in raw or not isinstance(raw[key], kind):
            raise DataError(f"{path}: '{key}' is required and must be a {kind.__name__}")
        return raw[key]

    kind = need("kind")
    try:
        runs_as = kind_of(kind)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    metrics = []
    for m in raw.get("metrics", []):
        if isinstance(m, str):
            metrics.append({"name": m, "fn": m})
        elif isinstance(m, dict) and "name" in m:
            metrics.append({"name": str(m["name"]), "fn": str(m.get("fn", m["name"]))})
        else:
            raise DataError(f"{path}: each metric is a name or {{name, fn}}, not {m!r}")
    builtin = bool(raw.get("builtin", False))
    spec = SuiteSpec(
        name=need("name"), version=str(raw.get("version", "1")), kind=kind,
        loader=raw.get("loader", "inline" if builtin else ""), path=path, raw=raw,
        dataset=str(raw.get("dataset", "")), files=list(raw.get("files", [])), builtin=builtin,
        prompt=dict(raw.get("prompt", {})), metrics=metrics, by=list(raw.get("by", [])),
        params=dict(raw.get("params", {})), description=str(raw.get("description", "")).strip(),
        reference=str(raw.get("reference", "")).strip(),
    )
    if runs_as.name == "refusal":
        from workbench.evals.misuse import suite_sources

        suite_sources(spec)  # a bad sources list fails here, before any model time
        if raw.get("expect") not in (None, "refuse", "answer"):
            raise DataError(f"{path}: expect must be 'refuse' or 'answer', not {raw['expect']!r}")
    if runs_as.declares_data:
        if not spec.loader:
            raise DataError(f"{path}: 'loader' is required")
        if not metrics:
            raise DataError(f"{path}: 'metrics' must list at least one metric")
        if not builtin and not spec.files:
            raise DataError(f"{path}: 'files' is required for a suite that reads a data directory")
    return spec


def builtin_examples(spec: SuiteSpec) -> list[dict[str, Any]]:
    """A built-in suite's examples: ``examples:`` as written, or ``templates:`` x ``values:``.

    A template is ``{id, context, choices, label?, category?}`` with ``{field}`` slots; every
    combination of ``values`` fills it, and the example id is ``<template id>.<values>``.
    """
    raw = spec.raw
    out = list(raw.get("examples", []))
    values = raw.get("values", {})
    names = list(values)
    for tpl in raw.get("templates", []):
        for combo in itertools.product(*(values[n] for n in names)):
            fill = dict(zip(names, combo, strict=True))
            used = [str(fill[n]) for n in names if "{" + n + "}" in str(tpl.get("context", ""))]
            out.append({
                **{k: v for k, v in tpl.items() if k not in ("id", "context", "choices")},
                **fill,
                "id": ".".join([str(tpl["id"]), *used]).replace(" ", "_"),
                "context": str(tpl["context"]).format(**fill),
                "choices": [str(c).format(**fill) for c in tpl["choices"]],
            })
    for i, ex in enumerate(out):
        if not isinstance(ex, dict) or "id" not in ex:
            raise DataError(f"{spec.path}: example {i} needs an 'id'")
    return out


@dataclass
class GroupEntry:
    suite: str
    limit: int | None = None
    optional: bool = False  # skipped (with a note) when its data or plug-in is missing
    params: dict[str, Any] = field(default_factory=dict)


def list_groups() -> list[str]:
    path = suites_dir() / "groups.yaml"
    if not path.is_file():
        return []
    return sorted(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def load_group(name: str) -> list[GroupEntry]:
    """The suites of a group in ``evals/groups.yaml`` (``safety``, ``quick``)."""
    path = suites_dir() / "groups.yaml"
    groups = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if name not in groups:
        raise DataError(f"unknown suite group {name!r}; known: {', '.join(sorted(groups))}")
    entries = []
    for item in groups[name]["suites"]:
        if isinstance(item, str):
            item = {"suite": item}
        entries.append(GroupEntry(suite=item["suite"], limit=item.get("limit"),
                                  optional=bool(item.get("optional", False)),
                                  params=dict(item.get("params", {}))))
    return entries


# Metric functions (``workbench.evals.scoring.METRICS``) that compare the choices' likelihoods and
# have no correct answer: CrowS-Pairs and the occupation-pronoun probe. Their label marks the
# choice the metric counts (the stereotyped sentence, the male word), not a right answer.
PREFERENCE_FNS = frozenset({"pct_stereotype", "likelihood_diff", "pref_first", "mean_ll_diff"})


def is_preference_suite(suite: str, manifest: dict | None = None) -> bool:
    """Whether every metric of a suite only compares its choices (so no example is "wrong").

    Read from the suite file the run recorded (``manifest["suite"]["file"]``), else the built-in
    suite of that name; a run whose suite file is gone counts as preference only for
    ``crows_pairs``.

    >>> is_preference_suite("occupation_pronoun"), is_preference_suite("true_false_facts")
    (True, False)
    """
    recorded = ((manifest or {}).get("suite") or {}).get("file")
    for source in (recorded, suite):
        if not source:
            continue
        try:
            spec = load_suite(source)
        except (DataError, OSError):  # saved on another machine, or a suite since removed
            continue
        if spec.name == suite:
            return bool(spec.metrics) and all(m["fn"] in PREFERENCE_FNS for m in spec.metrics)
    return suite == "crows_pairs"
