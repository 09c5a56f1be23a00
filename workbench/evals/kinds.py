"""Suite kinds: how each kind of suite runs and what it adds to the manifest, in one table.

A suite file's ``kind:`` picks a row of :data:`KINDS`. ``loglik`` runs the log-likelihood
suites (``multiple_choice``, ``crows_pairs``, ``bbq``, ``truthfulqa_mc``: load the examples,
score every choice, summarise); ``toxicity`` samples continuations and scores them;
``refusal`` answers requests greedily and judges whether each answer refuses
(:mod:`workbench.evals.refusal`: ``harmful_requests``, ``over_refusal``, ``jbb_paired``). Each row
names its runner by import path, so a kind's module (and whatever it needs) is imported only
when a suite of that kind runs, and lists the optional modules it needs, which are checked
before it starts: a missing one raises :class:`MissingPluginError` and ``run_suite`` lists the
suite as skipped.

A runner is ``runner(model, spec, options, params, out) -> KindRun``: ``options`` the run's
:class:`~workbench.evals.options.EvalOptions`, ``params`` the manifest's ``params`` (suite file,
then the caller's), ``out`` the suite's result folder or ``None`` (a resumable kind keeps its
progress there). Adding a kind is one module with a runner and one row here.

>>> kind_of("crows_pairs").name, kind_of("toxicity").name, kind_of("refusal").name
('loglik', 'toxicity', 'refusal')
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from workbench.common.errors import DataError, WorkbenchError
from workbench.evals.options import EvalOptions

if TYPE_CHECKING:
    from workbench.evals.suites import SuiteSpec


class MissingPluginError(WorkbenchError, ImportError):
    """A suite kind needs a module that is not installed (found by an explicit check)."""


@dataclass
class KindRun:
    """What a kind's runner hands back to ``run_eval``.

    Attributes:
        metrics: the metrics table (columns of :data:`workbench.evals.result.METRIC_COLUMNS`).
        samples: one row per example (``example_id``, ``suite``, ``category`` and the kind's own).
        data: the manifest's ``data``: ``{"dir", "files": [{"path", "sha256", "bytes"}]}``.
        skipped: malformed rows skipped, per file (``{"rows", "lines", "problems"}``).
        extra: manifest keys the kind adds (``scorer``, ``sampling``, ``resumed_examples`` ...).
    """

    metrics: pd.DataFrame
    samples: pd.DataFrame
    data: dict[str, Any]
    skipped: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[Any, "SuiteSpec", EvalOptions, dict, Path | None], KindRun]


@dataclass(frozen=True)
class SuiteKind:
    """One row of :data:`KINDS`.

    Attributes:
        name: the kind (``"loglik"``, ``"toxicity"``, ``"refusal"``).
        file_kinds: the ``kind:`` values of suite files this row runs.
        runner: ``"module:function"``, imported when a suite of this kind runs.
        manifest: ``(spec, run) -> {"scorer", "sampling", "loglik", ...}``, the manifest section
            saying how the numbers were made (None where it does not apply).
        requires: modules beyond the runner's own that must be importable.
        declares_data: suite files of this kind name a loader, metrics and (unless built in)
            data files; a kind with its own prompt reader (toxicity, refusal) does not.
    """

    name: str
    file_kinds: tuple[str, ...]
    runner: str
    manifest: Callable[["SuiteSpec", KindRun], dict[str, Any]]
    requires: tuple[str, ...] = ()
    declares_data: bool = True

    def missing(self) -> list[str]:
        """The needed modules (the runner's first) that cannot be imported."""
        return [name for name in (self.runner.partition(":")[0], *self.requires) if not _importable(name)]

    def load_runner(self) -> Runner:
        """The runner function, after checking that what it needs is installed.

        Raises:
            MissingPluginError: a module in :meth:`missing`.
        """
        missing = self.missing()
        if missing:
            raise MissingPluginError(f"the {self.name} plug-in ({', '.join(missing)}) is not installed")
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or an entry blanked in sys.modules
        return False


# How the log-likelihood scorer tokenizes (workbench.evals.loglik), recorded with every such run.
LOGLIK_CONVENTION = ("lm-evaluation-harness 0.4.13 HFLM: context with the tokenizer's default "
                     "special tokens; empty context -> BOS/EOS prefix; continuation tokens = "
                     "tok(context+continuation) after tok(context)")


def loglik_manifest(spec: SuiteSpec, run: KindRun) -> dict[str, Any]:
    """Log-likelihood suites: the tokenization convention and the choice delimiter."""
    return {"scorer": None, "sampling": None,
            "loglik": {"convention": LOGLIK_CONVENTION, "delimiter": spec.prompt.get("delimiter", " ")}}


def generation_manifest(spec: SuiteSpec, run: KindRun) -> dict[str, Any]:
    """Generation suites: the scorer (name, scale note) and the sampling parameters."""
    return {"scorer": run.extra.get("scorer"), "sampling": run.extra.get("sampling"), "loglik": None}


def refusal_manifest(spec: SuiteSpec, run: KindRun) -> dict[str, Any]:
    """Refusal suites: the judge (name, measured agreement, classes) and the greedy decoding."""
    return {"scorer": None, "sampling": run.extra.get("generation"), "loglik": None, "judge": run.extra.get("judge")}


KINDS: dict[str, SuiteKind] = {
    "loglik": SuiteKind(
        name="loglik",
        # one entry per sample-deriving function in workbench.evals.scoring.DERIVE
        file_kinds=("multiple_choice", "crows_pairs", "bbq", "truthfulqa_mc"),
        runner="workbench.evals.scoring:run_loglik",
        manifest=loglik_manifest,
    ),
    "toxicity": SuiteKind(
        name="toxicity",
        file_kinds=("toxicity",),
        runner="workbench.evals.toxicity:run_kind",
        manifest=generation_manifest,
        declares_data=False,
    ),
    "refusal": SuiteKind(
        name="refusal",
        file_kinds=("refusal",),
        runner="workbench.evals.refusal:run_kind",
        manifest=refusal_manifest,
        declares_data=False,  # a refusal suite lists `sources` (workbench.evals.misuse), not files
    ),
}

def file_kinds() -> tuple[str, ...]:
    """Every suite-file ``kind:`` a row of :data:`KINDS` runs, in table order."""
    return tuple(k for row in KINDS.values() for k in row.file_kinds)


def kind_of(file_kind: str) -> SuiteKind:
    """The :data:`KINDS` row that runs suite files of ``kind: file_kind``.

    Raises:
        DataError: no row runs it.
    """
    for row in KINDS.values():
        if file_kind in row.file_kinds:
            return row
    raise DataError(f"kind {file_kind!r} is not one of {', '.join(file_kinds())}")
