"""Saved eval runs: the one model (:class:`EvalResult`, :class:`SuiteResult`) and its one reader.

The folder layout is documented in :mod:`workbench.evals`. Everything that opens a saved run
(the HTML report, the eval dashboard, ``run_suite`` reusing finished suites) goes through
:meth:`EvalResult.load`, :meth:`SuiteResult.load` or :func:`load_run`, which tells the two
kinds of folder apart. Every file is written atomically (temporary name, fsync, rename), and
``manifest.json`` last, so a folder with a manifest is a finished suite.

>>> run = load_run("runs/quick")                                   # doctest: +SKIP
>>> run.metrics.query("category == 'all'")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_path, atomic_write_json

FORMAT_VERSION = 1
# The metrics table's columns, always all of them, in this order.
METRIC_COLUMNS = ["suite", "metric", "category", "value", "ci_low", "ci_high", "n"]
# One suite's files; the manifest comes last, as it is written last.
SUITE_FILES = ("metrics.parquet", "samples.parquet", "manifest.json")
GROUP_INDEX = "suite.json"


class SavedRunError(WorkbenchError, FileNotFoundError):
    """A folder is not a saved eval run, its run did not finish, or one of its files is damaged."""


@dataclass
class EvalResult:
    """One suite's result: ``metrics`` (tidy), ``samples`` (one row per example), ``manifest``.

    >>> res = run_eval(model, "crows_pairs", limit=50)              # doctest: +SKIP
    >>> res.headline()                                              # doctest: +SKIP
    >>> res.save("runs/crows"); EvalResult.load("runs/crows")       # doctest: +SKIP
    """

    metrics: pd.DataFrame
    samples: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def suite(self) -> str:
        """The suite's name: the manifest's, else the metrics table's ("" if neither has one)."""
        name = (self.manifest.get("suite") or {}).get("name")
        if not name and len(self.metrics) and "suite" in self.metrics:
            name = self.metrics["suite"].iloc[0]
        return str(name or "")

    def headline(self) -> pd.DataFrame:
        """The overall rows (``category == "all"``)."""
        return self.metrics[self.metrics["category"] == "all"].reset_index(drop=True)

    def metric(self, name: str, category: str = "all") -> float:
        """One metric's value, e.g. ``res.metric("pct_stereotype")``."""
        rows = self.metrics[(self.metrics["metric"] == name) & (self.metrics["category"] == category)]
        if rows.empty:
            raise KeyError(f"no metric {name!r} for category {category!r} in suite {self.suite!r}")
        return float(rows["value"].iloc[0])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``metrics.parquet``, ``samples.parquet``, then ``manifest.json`` (last), each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in (("metrics.parquet", self.metrics), ("samples.parquet", self.samples)):
            with atomic_path(folder / name) as tmp:
                frame.to_parquet(tmp, index=False)
        atomic_write_json(folder / "manifest.json", {**self.manifest, "format_version": FORMAT_VERSION})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EvalResult:
        """Read a suite folder written by :meth:`save`.

        Raises:
            SavedRunError: no such folder, not a suite folder, a run that did not finish (no
                ``manifest.json``), or a missing or unreadable file; the message names it.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise SavedRunError(f"{folder}: no such run folder")
        if not (folder / "manifest.json").is_file():
            if (folder / "metrics.parquet").is_file() or (folder / "samples.parquet").is_file():
                raise SavedRunError(f"{folder}: no manifest.json: the run did not finish (it is written last)")
            raise SavedRunError(f"{folder}: not a saved eval run (expected {', '.join(SUITE_FILES)}, "
                                f"or {GROUP_INDEX} for a suite group)")
        for name in SUITE_FILES:
            if not (folder / name).is_file():
                raise SavedRunError(f"{folder}: {name} missing")
        manifest = _read_json(folder / "manifest.json")
        return cls(pd.read_parquet(folder / "metrics.parquet"), pd.read_parquet(folder / "samples.parquet"),
                   manifest)

    def __repr__(self) -> str:
        head = ", ".join(f"{r.metric}={r.value:.3f}" for r in self.headline().itertuples())
        return f"EvalResult({self.suite!r}, n={len(self.samples)}: {head})"


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished suite (all of :data:`SUITE_FILES`)."""
    folder = Path(folder)
    return all((folder / f).is_file() for f in SUITE_FILES)


@dataclass
class SuiteResult:
    """A suite group's results: one :class:`EvalResult` per suite, and notes on skipped ones."""

    group: str
    results: dict[str, EvalResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # suite -> why it did not run
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> pd.DataFrame:
        """All suites' metrics tables, concatenated."""
        frames = [r.metrics for r in self.results.values()]
        if not frames:
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def __getitem__(self, suite: str) -> EvalResult:
        return self.results[suite]

    def _index(self) -> dict[str, Any]:
        return {"group": self.group, "suites": list(self.results), "skipped": self.skipped,
                "params": self.params, "format_version": FORMAT_VERSION}

    def save(self, folder: str | os.PathLike) -> Path:
        """One subfolder per suite (those not saved there yet) plus ``suite.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, res in self.results.items():
            if not is_complete(folder / name):
                res.save(folder / name)
        atomic_write_json(folder / GROUP_INDEX, self._index())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SuiteResult:
        """Read a group folder: ``suite.json`` and every listed suite that finished.

        A listed suite without ``manifest.json`` is still running (or was interrupted) and is
        left out; one with a manifest but a missing file is damaged and raises.

        Raises:
            SavedRunError: no ``suite.json``, an unreadable one, or a damaged suite folder.
        """
        folder = Path(folder)
        index_path = folder / GROUP_INDEX
        if not index_path.is_file():
            raise SavedRunError(f"{folder}: no {GROUP_INDEX} (not a suite result folder)")
        index = _read_json(index_path)
        results = {name: EvalResult.load(folder / name) for name in index.get("suites", [])
                   if (folder / name / "manifest.json").is_file()}
        return cls(str(index.get("group", folder.name)), results, dict(index.get("skipped") or {}),
                   dict(index.get("params") or {}))

    def __repr__(self) -> str:
        return f"SuiteResult({self.group!r}, suites={list(self.results)}, skipped={list(self.skipped)})"


def load_run(folder: str | os.PathLike) -> EvalResult | SuiteResult:
    """A saved run: a :class:`SuiteResult` for a group folder (``suite.json``), else an :class:`EvalResult`.

    Raises:
        SavedRunError: see :meth:`EvalResult.load` and :meth:`SuiteResult.load`.

    >>> run = load_run("runs/safety")                                  # doctest: +SKIP
    >>> list(run.results) if isinstance(run, SuiteResult) else run.suite  # doctest: +SKIP
    """
    folder = Path(folder)
    if (folder / GROUP_INDEX).is_file():
        return SuiteResult.load(folder)
    return EvalResult.load(folder)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SavedRunError(f"{path}: not valid JSON ({err.msg})") from None
