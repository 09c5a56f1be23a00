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
This module loads and checks a concept file; the recipes themselves are in ``recipes.py``.

>>> from workbench.probing import load_concept, list_concepts
>>> "gender" in list_concepts()
True
>>> c = load_concept("gender", limit=100)
>>> len(c), c.label_names, sorted(c.frame.label.value_counts().tolist())
(100, ('female', 'male'), [50, 50])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from workbench.probing.recipes import COLUMNS, expand_facts, expand_grammar, expand_source, field_error, get_field

SUFFIXES = (".yaml", ".yml")
RECIPES = ("grammar", "facts", "source")


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

    >>> c = load_concept("sentiment")
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


def load_concept(name_or_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 limit: int | None = None, seed: int = 0) -> Concept:
    """Load a concept by built-in name or from a concept file, and expand its examples.

    Args:
        name_or_path: A name from :func:`list_concepts`, or the path of a ``.yaml`` file.
        data_dir: Data directory for ``source`` concepts; defaults to ``$WORKBENCH_DATA``, then
            the per-user folder (:func:`workbench.common.data_dir.resolve_data_dir`).
        limit: At most this many examples: the same number per class, spread round-robin
            over groups, drawn with ``seed``. ``None`` keeps every example.
        seed: Seed of the ``limit`` subsample (the full expansion never depends on it).

    Returns:
        The :class:`Concept`.

    Raises:
        ValueError: Unknown name (the message lists the known ones), a malformed file (it
            names the file and the key), or examples of only one class.
        FileNotFoundError: The concept file is missing.
        MissingDataError: A ``source`` concept's data directory, or a data file it reads, is
            missing (a ``WorkbenchError`` and a ``FileNotFoundError``; the message says where
            it looked and how to fill it).

    >>> c = load_concept("truth", limit=40, seed=1)
    >>> len(c), c.frame.groupby("label").size().tolist()
    (40, [20, 20])
    >>> load_concept("colour")
    Traceback (most recent call last):
    ValueError: unknown concept 'colour'; known: gender, sentiment, toxicity, truth (or pass the path of a .yaml concept file)
    """
    path = _resolve(name_or_path)
    raw = path.read_bytes()
    spec = _parse(raw, path)
    name = get_field(spec, "name", str, path)
    card = get_field(spec, "card", str, path).strip()
    label_names = get_field(spec, "label_names", list, path)
    if len(label_names) < 2 or not all(isinstance(n, str) for n in label_names):
        raise field_error(path, "label_names", "must be a list of at least two strings (quote "
                          "yes/no/true/false: bare, YAML reads them as booleans)")
    recipes = [k for k in RECIPES if k in spec]
    if len(recipes) != 1:
        raise field_error(path, "|".join(RECIPES), f"exactly one recipe is needed, found {recipes or 'none'}")

    read: list[tuple[str, bytes]] = []  # data files read, for the hash
    if "grammar" in spec:
        frame = expand_grammar(get_field(spec, "grammar", dict, path), label_names, path)
    elif "facts" in spec:
        if len(label_names) != 2:
            raise field_error(path, "label_names", "a facts concept has two labels: [<false>, <true>]")
        frame = expand_facts(get_field(spec, "facts", list, path), path)
    else:
        selection = spec.get("selection") or {}
        if not isinstance(selection, dict):
            raise field_error(path, "selection", "must be a mapping")
        frame = expand_source(get_field(spec, "source", dict, path), selection, label_names, path,
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
    group_key = dict(zip(sorted(order["group"].unique()), rng.random(order["group"].nunique()), strict=True))
    # rank 1 of every group comes before rank 2 of any group: that is the round-robin.
    order["_rank"] = order.groupby(["label", "group"])["_key"].rank(method="first")
    order["_gkey"] = order["group"].map(group_key)
    picked = order.sort_values(["_rank", "_gkey"]).groupby("label").head(per_class)
    return frame.loc[sorted(picked.index)].reset_index(drop=True)
