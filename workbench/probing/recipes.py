"""The recipes that make a concept's examples, and checked reads of a concept file's fields.

Each recipe turns its section of a concept file into a DataFrame with columns ``text``,
``label``, ``group`` and ``word`` (plus its own extras); :func:`~workbench.probing.concepts.load_concept`
checks and subsamples it. Every problem raises ``ValueError`` naming the file and the key
(``field_error``), so a typo in a YAML file is found by its address.

- ``grammar`` (:func:`expand_grammar`): templates with slots x filler lists, expanded in full.
- ``facts`` (:func:`expand_facts`): tables of true facts, each with a false twin by a fixed rule.
- ``source`` (:func:`expand_source`): statements read from files under the data directory
  (:func:`workbench.common.data_dir.resolve_data_dir`), with a deterministic selection rule.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.common.data_dir import DATA_ENV, resolve_data_dir
from workbench.common.errors import MissingDataError

COLUMNS = ("text", "label", "group", "word")

# "{slot}" or "{slot.form}" inside a template.
_FIELD = re.compile(r"\{(\w+)(?:\.(\w+))?\}")


# ------------------------------------------------------------------------- fields --

def field_error(path: Path, key: str, problem: str) -> ValueError:
    """The error for a bad field: ``<file>: `<key>` <problem>``."""
    return ValueError(f"{path}: `{key}` {problem}")


def get_field(spec: dict, key: str, kind: type, path: Path, where: str = "") -> Any:
    """``spec[key]``, which must exist and be a ``kind`` (a bool is no int); ``where``: its parent key."""
    where = f"{where}.{key}" if where else key
    if key not in spec:
        raise field_error(path, where, "is missing")
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise field_error(path, where, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _scalar(value: Any, path: Path, where: str) -> str:
    # YAML turns bare no/yes/on/off into booleans and 3.0 into a float: refuse the first,
    # since "Norway: no" silently becoming False is exactly the bug this guards against.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise field_error(path, where, f"must be a string or number, got {value!r} (quote it)")
    return str(value)


def _label(value: Any, label_names: list[str], path: Path, where: str) -> int:
    if isinstance(value, str) and value in label_names:
        return label_names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(label_names):
        return value
    raise field_error(path, where, f"is {value!r}: must be one of {label_names} or an index into them")


def _templates(items: Any, path: Path, where: str, prefix: str = "t") -> list[tuple[str, str]]:
    if not isinstance(items, list) or not items:
        raise field_error(path, where, "must be a non-empty list of templates")
    out = []
    for i, t in enumerate(items):
        if isinstance(t, dict):
            out.append((_scalar(get_field(t, "id", object, path, f"{where}[{i}]"), path, f"{where}[{i}].id"),
                        get_field(t, "text", str, path, f"{where}[{i}]")))
        elif isinstance(t, str):
            out.append((f"{prefix}{i}", t))
        else:
            raise field_error(path, f"{where}[{i}]", "must be a string or a mapping with id and text")
    return out


# ---------------------------------------------------------------------------- recipes --

def expand_grammar(g: dict, label_names: list[str], path: Path) -> pd.DataFrame:
    """The ``grammar`` recipe: every template with every combination of its slots' fillers."""
    label_slot = get_field(g, "label_slot", str, path, "grammar")
    slots = get_field(g, "slots", dict, path, "grammar")
    templates = _templates(g.get("templates"), path, "grammar.templates")
    if label_slot not in slots:
        raise field_error(path, "grammar.label_slot", f"names slot {label_slot!r}, which is not in grammar.slots")
    fillers: dict[str, list[dict[str, Any]]] = {}
    for slot, values in slots.items():
        where = f"grammar.slots.{slot}"
        if slot in COLUMNS + ("template", "item"):
            raise field_error(path, where, "is a reserved column name; rename the slot")
        if not isinstance(values, list) or not values:
            raise field_error(path, where, "must be a non-empty list of fillers")
        fillers[slot] = [_filler(v, slot == label_slot, label_names, path, f"{where}[{i}]")
                         for i, v in enumerate(values)]

    rows = []
    for tid, text in templates:
        used = list(dict.fromkeys(slot for slot, _ in _FIELD.findall(text)))
        where = f"grammar.templates[{tid}]"
        for slot in used:
            if slot not in fillers:
                raise field_error(path, where, f"uses slot {{{slot}}}, which is not in grammar.slots")
        if label_slot not in used:
            raise field_error(path, where, f"does not use the label slot {{{label_slot}}}")
        others = [s for s in used if s != label_slot]
        for combo in itertools.product(*(fillers[s] for s in used)):
            chosen = dict(zip(used, combo, strict=True))
            # sub calls the lambda at once, so the loop variables it reads are the current ones.
            sentence = _FIELD.sub(lambda m: _render(chosen[m[1]], m[1], m[2], path, where), text)  # noqa: B023
            if "{" in sentence or "}" in sentence:
                raise field_error(path, where, f"has a brace that is not a {{slot}} or {{slot.form}}: {text!r}")
            lab = chosen[label_slot]
            rows.append({"text": sentence, "label": lab["label"], "group": lab["group"],
                         "word": lab["word"], "template": tid,
                         **{s: chosen[s]["word"] for s in others},
                         "item": "|".join([tid] + [f"{s}={chosen[s]['word']}" for s in others])})
    return pd.DataFrame(rows)


def _filler(value: Any, labelled: bool, label_names: list[str], path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        if labelled:
            raise field_error(path, where, "a filler of the label slot must be a mapping with label, word and group")
        return {"word": _scalar(value, path, where)}
    out = {k: _scalar(v, path, f"{where}.{k}") for k, v in value.items() if k != "label"}
    if "word" not in out:
        raise field_error(path, f"{where}.word", "is missing")
    if labelled:
        out["label"] = _label(value.get("label"), label_names, path, f"{where}.label")
        out.setdefault("group", out["word"])
    return out


def _render(filler: dict, slot: str, form: str | None, path: Path, where: str) -> str:
    key = form or ("text" if "text" in filler else "word")
    if key not in filler or key == "label":
        raise field_error(path, where, f"uses {{{slot}.{form}}} but filler {filler['word']!r} of slot "
                          f"{slot!r} has no {form!r}")
    return filler[key]


def expand_facts(tables: list, path: Path) -> pd.DataFrame:
    """The ``facts`` recipe: per table row one true statement per template and its false twin."""
    rows = []
    for ti, table in enumerate(tables):
        where = f"facts[{ti}]"
        if not isinstance(table, dict):
            raise field_error(path, where, "must be a mapping with table, negative, templates and rows")
        name = get_field(table, "table", str, path, where)
        where = f"facts[{name}]"
        negative = get_field(table, "negative", str, path, where)
        if negative not in ("rotate", "swap"):
            raise field_error(path, f"{where}.negative", f"is {negative!r}: must be rotate or swap")
        shift = get_field(table, "shift", int, path, where) if "shift" in table else 1
        templates = _templates(table.get("templates"), path, f"{where}.templates", prefix=f"{name}/")
        facts = _fact_rows(table.get("rows"), path, f"{where}.rows")
        true_set = set(facts)
        if negative == "rotate" and len({s for s, _ in facts}) != len(facts):
            # One subject with two objects would make a "false" twin that is another row's truth.
            raise field_error(path, f"{where}.rows", "repeats a subject; rotate needs one object per subject")
        for j, (subj, obj) in enumerate(facts):
            if negative == "swap":
                false = (obj, subj)
            else:
                # The first row from `shift` places down whose object differs from this one.
                n = len(facts)
                candidates = (facts[(j + shift + k) % n][1] for k in range(n))
                other = next((o for o in candidates if o != obj), None)
                if other is None:
                    raise field_error(path, f"{where}.rows", "all rows share one object: no false twin possible")
                false = (subj, other)
            if false in true_set:
                raise field_error(path, f"{where}.rows", f"the false twin {false} of {(subj, obj)} is itself a row")
            for tid, text in templates:
                for label, (s, o) in ((1, (subj, obj)), (0, false)):
                    try:
                        sentence = text.format(subject=s, object=o)
                    except (KeyError, IndexError, ValueError):
                        raise field_error(path, f"{where}.templates", f"{text!r} may use only {{subject}} "
                                          "and {object}") from None
                    rows.append({"text": sentence, "label": label, "group": f"{name}:{subj}->{obj}",
                                 "word": f"{name}:{s}->{o}", "table": name, "template": tid,
                                 "subject": s, "object": o})
    return pd.DataFrame(rows)


def _fact_rows(rows: Any, path: Path, where: str) -> list[tuple[str, str]]:
    if isinstance(rows, dict):
        items = list(rows.items())
    elif isinstance(rows, list) and all(isinstance(r, list) and len(r) == 2 for r in rows):
        items = [tuple(r) for r in rows]
    else:
        raise field_error(path, where, "must be a mapping subject: object, or a list of [subject, object] pairs")
    if not items:
        raise field_error(path, where, "is empty")
    return [(_scalar(s, path, f"{where}[{i}]"), _scalar(o, path, f"{where}[{i}]"))
            for i, (s, o) in enumerate(items)]


def expand_source(src: dict, sel: dict, label_names: list[str], path: Path,
                  data_dir: str | os.PathLike | None, read: list[tuple[str, bytes]]) -> pd.DataFrame:
    """The ``source`` recipe: statements from files under the data directory, then ``sel``'s rule.

    Every file read is appended to ``read`` as ``(relative path, bytes)``, for the concept's hash.
    """
    fmt = src.get("format", "lines")
    if fmt not in _READERS:
        raise field_error(path, "source.format", f"is {fmt!r}: must be one of {sorted(_READERS)}")
    entries = _source_files(src, label_names, path)
    root = resolve_data_dir(data_dir, needed_by=f"concept {path.stem!r} ({path.name})")

    per_file: list[tuple[str, int, str, list[str]]] = []
    for rel, label, group in entries:
        file = root / rel
        if not file.is_file():
            raise MissingDataError(f"{path.name}: data file {file} not found (data directory {root}: "
                                   f"data_dir= > ${DATA_ENV} > the per-user folder); fetch the "
                                   f"published files with `workbench data pull`")
        data = file.read_bytes()
        read.append((rel, data))
        statements = list(dict.fromkeys(_READERS[fmt](data, src, path)))  # unique, first-seen order
        per_file.append((rel, label, group, statements))

    if sel.get("drop_shared", True):
        # A statement in two files has two labels or two groups: either way it would leak.
        seen: dict[str, int] = {}
        for *_, statements in per_file:
            for s in statements:
                seen[s] = seen.get(s, 0) + 1
        per_file = [(r, lab, g, [s for s in st if seen[s] == 1]) for r, lab, g, st in per_file]
    cap = sel.get("per_file")
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise field_error(path, "selection.per_file", "must be a positive integer")
        per_file = [(r, lab, g, st[:cap]) for r, lab, g, st in per_file]
    balance = sel.get("balance")
    if balance not in (None, "group"):
        raise field_error(path, "selection.balance", f"is {balance!r}: must be group or absent")

    frame = pd.DataFrame([{"text": s, "label": lab, "group": g, "word": s, "source": r}
                          for r, lab, g, st in per_file for s in st])
    if balance == "group" and len(frame):
        # Per group, keep the first k of every label, k = the smallest label's count there.
        k = (frame.groupby(["group", "label"]).size().unstack(fill_value=0)
             .reindex(columns=range(len(label_names)), fill_value=0).min(axis=1))
        rank = frame.groupby(["group", "label"]).cumcount()
        frame = frame[rank < frame["group"].map(k)]
    return frame


def _source_files(src: dict, label_names: list[str], path: Path) -> list[tuple[str, int, str]]:
    files = src.get("files")
    if isinstance(files, str):
        groups = get_field(src, "groups", list, path, "source")
        try:
            return [(files.format(label=name, group=_scalar(g, path, "source.groups")), i, str(g))
                    for g in groups for i, name in enumerate(label_names)]
        except (KeyError, IndexError):
            raise field_error(path, "source.files", "a pattern may use only {label} and {group}") from None
    if isinstance(files, list) and files:
        out = []
        for i, f in enumerate(files):
            where = f"source.files[{i}]"
            if not isinstance(f, dict):
                raise field_error(path, where, "must be a mapping with path, label and group")
            out.append((get_field(f, "path", str, path, where),
                        _label(f.get("label"), label_names, path, f"{where}.label"),
                        _scalar(get_field(f, "group", object, path, where), path, f"{where}.group")))
        return out
    raise field_error(path, "source.files", "must be a pattern with {label} and {group}, or a list of "
                      "{path, label, group} mappings")


def _read_lines(data: bytes, src: dict, path: Path) -> list[str]:
    split, prefix = src.get("split"), src.get("strip_prefix")
    out = []
    for line in data.decode("utf-8-sig").splitlines():
        for part in line.split(split) if split else [line]:
            part = part.strip()
            if prefix and part.startswith(prefix):
                part = part[len(prefix):].strip()
            if part:
                out.append(part)
    return out


def _read_jsonl(data: bytes, src: dict, path: Path) -> list[str]:
    field_path = get_field(src, "text_field", str, path, "source").split(".")  # dotted: prompt.text
    out = []
    for line in data.decode("utf-8-sig").splitlines():
        if line.strip():
            value: Any = json.loads(line)
            for key in field_path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str) and value.strip():
                out.append(value.strip())
    return out


def _read_csv(data: bytes, src: dict, path: Path) -> list[str]:
    column = get_field(src, "text_column", str, path, "source")
    delimiter = src.get("delimiter", ",")
    reader = csv.DictReader(data.decode("utf-8-sig").splitlines(), delimiter=delimiter)
    return [r[column].strip() for r in reader if (r.get(column) or "").strip()]


_READERS = {"lines": _read_lines, "jsonl": _read_jsonl, "csv": _read_csv}
