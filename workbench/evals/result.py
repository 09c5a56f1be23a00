"""Results of an eval suite and of a suite group, saved as Parquet + JSON.

The folder layout is documented in :mod:`workbench.evals` (the contract the HTML report reads).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FORMAT_VERSION = 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


@dataclass
class EvalResult:
    """One suite's result: ``metrics`` (tidy), ``samples`` (one row per example), ``manifest``.

    >>> res = wb.run_eval(model, "crows_pairs", limit=50)          # doctest: +SKIP
    >>> res.headline()                                              # doctest: +SKIP
    >>> res.save("runs/crows"); wb.evals.EvalResult.load("runs/crows")    # doctest: +SKIP
    """

    metrics: pd.DataFrame
    samples: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def suite(self) -> str:
        return self.manifest.get("suite", {}).get("name", "")

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
        """Write ``metrics.parquet``, ``samples.parquet``, then ``manifest.json`` (last, atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_parquet(self.metrics, folder / "metrics.parquet")
        _write_parquet(self.samples, folder / "samples.parquet")
        manifest = {**self.manifest, "format_version": FORMAT_VERSION}
        _atomic_write(folder / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EvalResult":
        folder = Path(folder)
        if not is_complete(folder):
            raise FileNotFoundError(f"{folder}: not a finished eval result (needs metrics.parquet, "
                                    f"samples.parquet and manifest.json)")
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(pd.read_parquet(folder / "metrics.parquet"), pd.read_parquet(folder / "samples.parquet"),
                   manifest)

    def __repr__(self) -> str:
        head = ", ".join(f"{r.metric}={r.value:.3f}" for r in self.headline().itertuples())
        return f"EvalResult({self.suite!r}, n={len(self.samples)}: {head})"


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return all((folder / f).is_file() for f in ("metrics.parquet", "samples.parquet", "manifest.json"))


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
            from workbench.evals.scoring import METRIC_COLUMNS

            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def __getitem__(self, suite: str) -> EvalResult:
        return self.results[suite]

    def _index(self) -> dict[str, Any]:
        return {"group": self.group, "suites": list(self.results), "skipped": self.skipped,
                "params": self.params, "format_version": FORMAT_VERSION}

    def save(self, folder: str | os.PathLike) -> Path:
        """One subfolder per suite plus ``suite.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, res in self.results.items():
            if not is_complete(folder / name):
                res.save(folder / name)
        _atomic_write(folder / "suite.json", json.dumps(self._index(), indent=2, default=str).encode())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SuiteResult":
        folder = Path(folder)
        index_path = folder / "suite.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{folder}: no suite.json (not a suite result folder)")
        index = json.loads(index_path.read_text())
        results = {name: EvalResult.load(folder / name) for name in index["suites"] if is_complete(folder / name)}
        return cls(index["group"], results, dict(index.get("skipped", {})), dict(index.get("params", {})))

    def __repr__(self) -> str:
        return f"SuiteResult({self.group!r}, suites={list(self.results)}, skipped={list(self.skipped)})"
