"""Probe concepts: labelled sentence sets that ask "what does each layer know?".

A concept is one YAML file (the built-in ones live in the repository's ``probes/`` folder and
ship inside the wheel as ``workbench/probe_data/``): a ``name``, a ``card`` (what it measures, how
it was made, known confounds, what the labels mean), ``label_names``, and exactly one recipe
that makes its examples:

- ``grammar``: templates with slots x filler lists; the fillers of one slot (``label_slot``)
  carry the label, the group and the word. Expanded in full, in file order.
- ``facts``: small tables of true facts; each row gives one true statement per template and a
  false twin made by a fixed rule (``rotate``: another row's object; ``swap``: the two swapped).
- ``source``: statements read at run time from files under the data directory (third-party
  text is never committed), with a ``selection`` rule that is deterministic.

Every recipe yields a tidy DataFrame with columns ``text``, ``label`` (int, an index into
``label_names``), ``group`` (what grouped cross-validation must keep together) and ``word``
(the word type that carries the label: the Hewitt & Liang control task gives every word type
one random label), plus recipe-specific columns. ``probes/README.md`` documents the format.

>>> from workbench.probing import load, list_concepts
>>> "gender" in list_concepts()
True
>>> c = load("gender", limit=100)
>>> len(c), c.label_names, sorted(c.frame.label.value_counts().tolist())
(100, ('female', 'male'), [50, 50])
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

DATA_ENV = "WORKBENCH_DATA"
SUFFIXES = (".yaml", ".yml")
COLUMNS = ("text", "label", "group", "word")
RECIPES = ("grammar", "facts", "source")

# "{slot}" or "{slot.form}" inside a template.
_FIELD = re.compile(r"\{(\w+)(?:\.(\w+))?\}")


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames with == is not a bool
class Concept:
    """A loaded probe concept: its examples plus what is needed to cite and reproduce them.

    Attributes:
        name: The concept's name (``gender``, ``truth``, ...).
        card: What it measures, how it was made, known confounds, what the labels mean.
        label_names: ``label_names[i]`` names label ``i``.
        frame: One row per example: ``text``, ``label``, ``group``, ``word`` and extras.
        source_hash: sha256 of the concept file followed by every data file it read; with
            ``limit`` and ``seed`` it pins the examples down exactly.
        path: The concept file that was loaded.
        limit: The ``limit`` asked for (``None``: every example).
        seed: The seed of the ``limit`` subsample.

    >>> c = load("sentiment")
    >>> c.texts[0], int(c.labels[0]), c.label_names[c.labels[0]], c.groups[0]
    ('The movie was good.', 1, 'positive', 'good/bad')
    """

    name: str
    card: str
    label_names: tuple[str, ...]
    frame: pd.DataFrame = field(repr=False)
    source_hash: str
    path: str = ""
    limit: int | None = None
    seed: int = 0

    @property
    def texts(self) -> list[str]:
        """The example sentences, in frame order."""
        return self.frame["text"].tolist()

    @property
    def labels(self) -> np.ndarray:
        """Integer labels, shape ``(n,)``."""
        return self.frame["label"].to_numpy(dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Group of every example (for ``GroupKFold``-style splits), shape ``(n,)``."""
        return self.frame["group"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        counts = self.frame["label"].value_counts().sort_index()
        per_label = ", ".join(f"{self.label_names[i]}={n}" for i, n in counts.items())
        return (f"Concept({self.name!r}, {len(self)} examples: {per_label}; "
                f"{self.frame['group'].nunique()} groups; sha256 {self.source_hash[:12]})")


def concepts_dir() -> Path:
    """The folder holding the built-in concept files.

    An installed wheel has them as package data (``workbench/probe_data/``); a source checkout
    (including the editable install used in development) has them at the repository root.

    >>> concepts_dir().name
    'probes'
    """
    installed = resources.files("workbench") / "probe_data"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "probes"


def list_concepts() -> list[str]:
    """Names of the built-in concepts, sorted.

    >>> [n for n in list_concepts() if n in ("gender", "truth")]
    ['gender', 'truth']
    """
    folder = concepts_dir()
    return sorted({p.stem for p in folder.iterdir() if p.suffix in SUFFIXES}) if folder.is_dir() else []


def load(name_or_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
         limit: int | None = None, seed: int = 0) -> Concept:
    """Load a concept by built-in name or from a concept file, and expand its examples.

    Args:
        name_or_path: A name from :func:`list_concepts`, or the path of a ``.yaml`` file.
        data_dir: Data directory for ``source`` concepts; defaults to ``$WORKBENCH_DATA``.
        limit: At most this many examples: the same number per class, spread round-robin
            over groups, drawn with ``seed``. ``None`` keeps every example.
        seed: Seed of the ``limit`` subsample (the full expansion never depends on it).

    Returns:
        The :class:`Concept`.

    Raises:
        ValueError: Unknown name (the message lists the known ones), a malformed file (it
            names the file and the key), or examples of only one class.
        FileNotFoundError: The concept file, or a data file it reads, is missing (the
            message names the file and ``WORKBENCH_DATA``).

    >>> c = load("truth", limit=40, seed=1)
    >>> len(c), c.frame.groupby("label").size().tolist()
    (40, [20, 20])
    >>> load("colour")
    Traceback (most recent call last):
    ValueError: unknown concept 'colour'; known: gender, sentiment, toxicity, truth (or pass the path of a .yaml concept file)
    """
    path = _resolve(name_or_path)
    raw = path.read_bytes()
    spec = _parse(raw, path)
    name = _get(spec, "name", str, path)
    card = _get(spec, "card", str, path).strip()
    label_names = _get(spec, "label_names", list, path)
    if len(label_names) < 2 or not all(isinstance(n, str) for n in label_names):
        raise _bad(path, "label_names", "must be a list of at least two strings (quote "
                   "yes/no/true/false: bare, YAML reads them as booleans)")
    recipes = [k for k in RECIPES if k in spec]
    if len(recipes) != 1:
        raise _bad(path, "|".join(RECIPES), f"exactly one recipe is needed, found {recipes or 'none'}")

    read: list[tuple[str, bytes]] = []  # data files read, for the hash
    if "grammar" in spec:
        frame = _expand_grammar(_get(spec, "grammar", dict, path), label_names, path)
    elif "facts" in spec:
        if len(label_names) != 2:
            raise _bad(path, "label_names", "a facts concept has two labels: [<false>, <true>]")
        frame = _expand_facts(_get(spec, "facts", list, path), path)
    else:
        selection = spec.get("selection") or {}
        if not isinstance(selection, dict):
            raise _bad(path, "selection", "must be a mapping")
        frame = _expand_source(_get(spec, "source", dict, path), selection, label_names, path,
                               data_dir, read)
    frame = _check(frame, label_names, path)

    digest = hashlib.sha256(raw)
    for rel, data in read:
        digest.update(b"\0" + rel.encode() + b"\0" + data)
    if limit is not None:
        frame = _subsample(frame, limit, seed)
    return Concept(name=name, card=card, label_names=tuple(label_names), frame=frame,
                   source_hash=digest.hexdigest(), path=str(path), limit=limit, seed=seed)


# ---------------------------------------------------------------------------------- files --

def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(SUFFIXES) or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"concept file {path} does not exist")
        return path
    known = list_concepts()
    if text not in known:
        raise ValueError(f"unknown concept {text!r}; known: {', '.join(known) or '(none)'} "
                         "(or pass the path of a .yaml concept file)")
    folder = concepts_dir()
    return next(folder / (text + s) for s in SUFFIXES if (folder / (text + s)).is_file())


def _parse(raw: bytes, path: Path) -> dict:
    try:
        spec = yaml.safe_load(raw)  # safe_load: a concept file is data, never code
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with keys name, card, label_names and a "
                         f"recipe ({', '.join(RECIPES)}), got {type(spec).__name__}")
    return spec


def _bad(path: Path, key: str, problem: str) -> ValueError:
    return ValueError(f"{path}: `{key}` {problem}")


def _get(spec: dict, key: str, kind: type, path: Path, where: str = "") -> Any:
    where = f"{where}.{key}" if where else key
    if key not in spec:
        raise _bad(path, where, "is missing")
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _bad(path, where, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _scalar(value: Any, path: Path, where: str) -> str:
    # YAML turns bare no/yes/on/off into booleans and 3.0 into a float: refuse the first,
    # since "Norway: no" silently becoming False is exactly the bug this guards against.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(path, where, f"must be a string or number, got {value!r} (quote it)")
    return str(value)


def _label(value: Any, label_names: list[str], path: Path, where: str) -> int:
    if isinstance(value, str) and value in label_names:
        return label_names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(label_names):
        return value
    raise _bad(path, where, f"is {value!r}: must be one of {label_names} or an index into them")


def _templates(items: Any, path: Path, where: str, prefix: str = "t") -> list[tuple[str, str]]:
    if not isinstance(items, list) or not items:
        raise _bad(path, where, "must be a non-empty list of templates")
    out = []
    for i, t in enumerate(items):
        if isinstance(t, dict):
            out.append((_scalar(_get(t, "id", object, path, f"{where}[{i}]"), path, f"{where}[{i}].id"),
                        _get(t, "text", str, path, f"{where}[{i}]")))
        elif isinstance(t, str):
            out.append((f"{prefix}{i}", t))
        else:
            raise _bad(path, f"{where}[{i}]", "must be a string or a mapping with id and text")
    return out


# ---------------------------------------------------------------------------- recipes --

def _expand_grammar(g: dict, label_names: list[str], path: Path) -> pd.DataFrame:
    label_slot = _get(g, "label_slot", str, path, "grammar")
    slots = _get(g, "slots", dict, path, "grammar")
    templates = _templates(g.get("templates"), path, "grammar.templates")
    if label_slot not in slots:
        raise _bad(path, "grammar.label_slot", f"names slot {label_slot!r}, which is not in grammar.slots")
    fillers: dict[str, list[dict[str, Any]]] = {}
    for slot, values in slots.items():
        where = f"grammar.slots.{slot}"
        if slot in COLUMNS + ("template", "item"):
            raise _bad(path, where, "is a reserved column name; rename the slot")
        if not isinstance(values, list) or not values:
            raise _bad(path, where, "must be a non-empty list of fillers")
        fillers[slot] = [_filler(v, slot == label_slot, label_names, path, f"{where}[{i}]")
                         for i, v in enumerate(values)]

    rows = []
    for tid, text in templates:
        used = list(dict.fromkeys(slot for slot, _ in _FIELD.findall(text)))
        where = f"grammar.templates[{tid}]"
        for slot in used:
            if slot not in fillers:
                raise _bad(path, where, f"uses slot {{{slot}}}, which is not in grammar.slots")
        if label_slot not in used:
            raise _bad(path, where, f"does not use the label slot {{{label_slot}}}")
        others = [s for s in used if s != label_slot]
        for combo in itertools.product(*(fillers[s] for s in used)):
            chosen = dict(zip(used, combo))
            sentence = _FIELD.sub(lambda m: _render(chosen[m[1]], m[1], m[2], path, where), text)
            if "{" in sentence or "}" in sentence:
                raise _bad(path, where, f"has a brace that is not a {{slot}} or {{slot.form}}: {text!r}")
            lab = chosen[label_slot]
            rows.append({"text": sentence, "label": lab["label"], "group": lab["group"],
                         "word": lab["word"], "template": tid,
                         **{s: chosen[s]["word"] for s in others},
                         "item": "|".join([tid] + [f"{s}={chosen[s]['word']}" for s in others])})
    return pd.DataFrame(rows)


def _filler(value: Any, labelled: bool, label_names: list[str], path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        if labelled:
            raise _bad(path, where, "a filler of the label slot must be a mapping with label, word and group")
        return {"word": _scalar(value, path, where)}
    out = {k: _scalar(v, path, f"{where}.{k}") for k, v in value.items() if k != "label"}
    if "word" not in out:
        raise _bad(path, f"{where}.word", "is missing")
    if labelled:
        out["label"] = _label(value.get("label"), label_names, path, f"{where}.label")
        out.setdefault("group", out["word"])
    return out


def _render(filler: dict, slot: str, form: str | None, path: Path, where: str) -> str:
    key = form or ("text" if "text" in filler else "word")
    if key not in filler or key == "label":
        raise _bad(path, where, f"uses {{{slot}.{form}}} but filler {filler['word']!r} of slot "
                   f"{slot!r} has no {form!r}")
    return filler[key]


def _expand_facts(tables: list, path: Path) -> pd.DataFrame:
    rows = []
    for ti, table in enumerate(tables):
        where = f"facts[{ti}]"
        if not isinstance(table, dict):
            raise _bad(path, where, "must be a mapping with table, negative, templates and rows")
        name = _get(table, "table", str, path, where)
        where = f"facts[{name}]"
        negative = _get(table, "negative", str, path, where)
        if negative not in ("rotate", "swap"):
            raise _bad(path, f"{where}.negative", f"is {negative!r}: must be rotate or swap")
        shift = _get(table, "shift", int, path, where) if "shift" in table else 1
        templates = _templates(table.get("templates"), path, f"{where}.templates", prefix=f"{name}/")
        facts = _fact_rows(table.get("rows"), path, f"{where}.rows")
        true_set = set(facts)
        if negative == "rotate" and len({s for s, _ in facts}) != len(facts):
            # One subject with two objects would make a "false" twin that is another row's truth.
            raise _bad(path, f"{where}.rows", "repeats a subject; rotate needs one object per subject")
        for j, (subj, obj) in enumerate(facts):
            if negative == "swap":
                false = (obj, subj)
            else:
                # The first row from `shift` places down whose object differs from this one.
                n = len(facts)
                candidates = (facts[(j + shift + k) % n][1] for k in range(n))
                other = next((o for o in candidates if o != obj), None)
                if other is None:
                    raise _bad(path, f"{where}.rows", "all rows share one object: no false twin possible")
                false = (subj, other)
            if false in true_set:
                raise _bad(path, f"{where}.rows", f"the false twin {false} of {(subj, obj)} is itself a row")
            for tid, text in templates:
                for label, (s, o) in ((1, (subj, obj)), (0, false)):
                    try:
                        sentence = text.format(subject=s, object=o)
                    except (KeyError, IndexError, ValueError):
                        raise _bad(path, f"{where}.templates", f"{text!r} may use only {{subject}} "
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
        raise _bad(path, where, "must be a mapping subject: object, or a list of [subject, object] pairs")
    if not items:
        raise _bad(path, where, "is empty")
    return [(_scalar(s, path, f"{where}[{i}]"), _scalar(o, path, f"{where}[{i}]"))
            for i, (s, o) in enumerate(items)]


def _expand_source(src: dict, sel: dict, label_names: list[str], path: Path,
                   data_dir: str | os.PathLike | None, read: list[tuple[str, bytes]]) -> pd.DataFrame:
    fmt = src.get("format", "lines")
    if fmt not in _READERS:
        raise _bad(path, "source.format", f"is {fmt!r}: must be one of {sorted(_READERS)}")
    entries = _source_files(src, label_names, path)
    root = _data_root(data_dir, path)

    per_file: list[tuple[str, int, str, list[str]]] = []
    for rel, label, group in entries:
        file = root / rel
        if not file.is_file():
            raise FileNotFoundError(f"{path.name}: data file {file} not found (data directory "
                                    f"{root}, from data_dir= or ${DATA_ENV})")
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
            raise _bad(path, "selection.per_file", "must be a positive integer")
        per_file = [(r, lab, g, st[:cap]) for r, lab, g, st in per_file]
    balance = sel.get("balance")
    if balance not in (None, "group"):
        raise _bad(path, "selection.balance", f"is {balance!r}: must be group or absent")

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
        groups = _get(src, "groups", list, path, "source")
        try:
            return [(files.format(label=name, group=_scalar(g, path, "source.groups")), i, str(g))
                    for g in groups for i, name in enumerate(label_names)]
        except (KeyError, IndexError):
            raise _bad(path, "source.files", "a pattern may use only {label} and {group}") from None
    if isinstance(files, list) and files:
        out = []
        for i, f in enumerate(files):
            where = f"source.files[{i}]"
            if not isinstance(f, dict):
                raise _bad(path, where, "must be a mapping with path, label and group")
            out.append((_get(f, "path", str, path, where),
                        _label(f.get("label"), label_names, path, f"{where}.label"),
                        _scalar(_get(f, "group", object, path, where), path, f"{where}.group")))
        return out
    raise _bad(path, "source.files", "must be a pattern with {label} and {group}, or a list of "
               "{path, label, group} mappings")


def _data_root(data_dir: str | os.PathLike | None, path: Path) -> Path:
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not root:
        raise FileNotFoundError(f"{path.name} reads its examples from the data directory: pass "
                                f"data_dir=... or set ${DATA_ENV}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} (from data_dir= or ${DATA_ENV}) does not exist")
    return root


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
    field_path = _get(src, "text_field", str, path, "source").split(".")  # dotted: prompt.text
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
    column = _get(src, "text_column", str, path, "source")
    delimiter = src.get("delimiter", ",")
    reader = csv.DictReader(data.decode("utf-8-sig").splitlines(), delimiter=delimiter)
    return [r[column].strip() for r in reader if (r.get(column) or "").strip()]


_READERS = {"lines": _read_lines, "jsonl": _read_jsonl, "csv": _read_csv}


# --------------------------------------------------------------------------- checks --

def _check(frame: pd.DataFrame, label_names: list[str], path: Path) -> pd.DataFrame:
    if frame.empty:
        raise ValueError(f"{path}: the recipe makes no examples")
    conflicts = frame.groupby("text")["label"].nunique()
    if (conflicts > 1).any():
        raise ValueError(f"{path}: the same text has two labels: {conflicts[conflicts > 1].index[0]!r}")
    frame = frame.drop_duplicates("text").reset_index(drop=True)
    present = sorted(frame["label"].unique())
    if len(present) < 2:
        raise ValueError(f"{path}: every example has label {label_names[present[0]]!r}; a probe "
                         "needs at least two classes")
    frame["label"] = frame["label"].astype(np.int64)
    for col in ("text", "group", "word"):
        frame[col] = frame[col].astype(str)
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def _subsample(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """Same number per class; within a class, round-robin over groups in a seeded order."""
    classes = frame["label"].nunique()
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < classes:
        raise ValueError(f"limit must be an integer >= the number of classes ({classes}), got {limit!r}")
    if limit >= len(frame):
        return frame
    per_class = min(limit // classes, int(frame["label"].value_counts().min()))
    rng = np.random.default_rng(seed)
    order = frame.assign(_key=rng.random(len(frame)))
    group_key = dict(zip(sorted(order["group"].unique()), rng.random(order["group"].nunique())))
    # rank 1 of every group comes before rank 2 of any group: that is the round-robin.
    order["_rank"] = order.groupby(["label", "group"])["_key"].rank(method="first")
    order["_gkey"] = order["group"].map(group_key)
    picked = order.sort_values(["_rank", "_gkey"]).groupby("label").head(per_class)
    return frame.loc[sorted(picked.index)].reset_index(drop=True)
