"""One refusal suite under several interventions, on the same examples, compared pairwise.

An intervention (the refusal direction ablated, a steering vector added, a random placebo) is a
context opened on the model; :func:`intervention_effects` runs the suite once per named context
(same seed, same subset, so the same prompts) and tabulates the refusal rate of the suite's
``all`` examples under each, with its bootstrap CI, and against the baseline run: the paired
difference with a paired bootstrap CI (examples resampled jointly) and McNemar's exact test on
the examples whose verdict changed (two-sided binomial test of the discordant pairs; McNemar
1947). The contexts come from the caller, so this module knows nothing of where a direction came
from.

>>> from workbench.evals.effects import intervention_effects
>>> placebo = rd.placebo(seed=0)                                                     # doctest: +SKIP
>>> intervention_effects(model, "harmful_requests", {"none": None, "bypass": rd.bypass,
...                      "placebo bypass": placebo.bypass}, limit=100, chat=True)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import numpy as np
import pandas as pd

from workbench.common.errors import WorkbenchError
from workbench.common.stats import bootstrap_ci, mcnemar_exact
from workbench.evals.result import EvalResult
from workbench.evals.run import run_eval
from workbench.evals.suites import load_suite

EFFECT_COLUMNS = ["suite", "intervention", "refusal_rate", "ci_low", "ci_high", "n", "diff", "diff_ci_low",
                  "diff_ci_high", "to_refusal", "to_answer", "p_mcnemar"]


def intervention_effects(
    model: Any,
    suite: str,
    interventions: Mapping[str, Callable[[], ContextManager] | EvalResult | None],
    *,
    baseline: str | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    **run_options: Any,
) -> pd.DataFrame:
    """Refusal rate of ``suite`` under each intervention, paired against ``baseline``.

    Args:
        model: the model the contexts act on.
        suite: a refusal suite (``harmful_requests``, ``over_refusal``, ``jbb_paired`` or a YAML
            file of kind ``refusal``).
        interventions: label -> a callable returning a context manager (``rd.bypass``,
            ``lambda: model.steer(...)``), ``None`` for no intervention, or an
            :class:`~workbench.evals.result.EvalResult` already made (it must hold the same
            examples: same ``limit`` and ``seed``); run in this order.
        baseline: the label the others are compared with (default: the first).
        out: a folder; each run is saved (and resumed after a kill) in ``out/<label>``.
        seed: the subset's and the bootstrap's seed (the same for every run).
        **run_options: passed to :func:`~workbench.evals.run.run_eval` (``limit``, ``chat``,
            ``data_dir``, ``judge``, ``max_new_tokens`` ...).

    Returns:
        One row per intervention (:data:`EFFECT_COLUMNS`): ``refusal_rate`` with ``ci_low`` /
        ``ci_high`` and ``n`` over the suite's ``all`` examples (those whose expected behaviour is
        the suite's ``expect``; every example when it has none); ``diff`` = its rate minus the
        baseline's with a paired bootstrap CI; ``to_refusal`` / ``to_answer``: examples the
        baseline answered and this run refused / the reverse; ``p_mcnemar``: McNemar's exact
        p-value (1.0 when no verdict changed). The baseline's own row has ``diff`` 0.
    """
    spec = load_suite(suite)
    if spec.kind != "refusal":
        raise WorkbenchError(f"intervention_effects: suite {spec.name!r} is of kind {spec.kind!r}, not 'refusal'")
    if not interventions:
        raise WorkbenchError("intervention_effects: interventions is empty (give at least a baseline)")
    labels = list(interventions)
    baseline = labels[0] if baseline is None else baseline
    if baseline not in interventions:
        raise WorkbenchError(f"intervention_effects: baseline {baseline!r} is not one of {labels}")
    folders = _folders(out, labels)
    refused: dict[str, pd.Series] = {}
    for label in labels:
        given = interventions[label]
        if isinstance(given, EvalResult):
            result = given
        else:
            with given() if given is not None else contextlib.nullcontext():
                result = run_eval(model, suite, seed=seed, out=folders[label], **run_options)
        samples = result.samples
        expect = spec.raw.get("expect")
        main = samples[samples["expected"] == expect] if expect else samples
        refused[label] = pd.Series(main["refusal"].to_numpy(bool), index=main["example_id"].to_numpy())
    base = refused[baseline]
    rows = []
    for label in labels:
        this = refused[label]
        if not this.index.equals(base.index):
            raise WorkbenchError(f"intervention_effects: run {label!r} scored other examples than {baseline!r}")
        rows.append(_row(spec.name, label, this.to_numpy(), base.to_numpy(), seed, n_bootstrap))
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def _row(suite: str, label: str, this: np.ndarray, base: np.ndarray, seed: int, n_bootstrap: int) -> dict:
    def mean(x):
        return float(np.mean(x)) if len(x) else float("nan")

    rate = mean(this)
    low, high = bootstrap_ci(mean, [this.astype(float)], n_boot=n_bootstrap, seed=seed)
    diff_low, diff_high = bootstrap_ci(lambda a, b: mean(a) - mean(b), [this.astype(float), base.astype(float)],
                                       n_boot=n_bootstrap, seed=seed)
    to_refusal, to_answer = int(np.sum(this & ~base)), int(np.sum(~this & base))
    return {"suite": suite, "intervention": label, "refusal_rate": rate, "ci_low": low, "ci_high": high,
            "n": len(this), "diff": rate - mean(base), "diff_ci_low": diff_low, "diff_ci_high": diff_high,
            "to_refusal": to_refusal, "to_answer": to_answer, "p_mcnemar": mcnemar_exact(to_refusal, to_answer)}


def _folders(out: str | Path | None, labels: list[str]) -> dict[str, Path | None]:
    if out is None:
        return dict.fromkeys(labels)
    names = {label: re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run" for label in labels}
    if len(set(names.values())) < len(names):
        raise WorkbenchError(f"intervention_effects: labels {labels} give the same folder name under {out}")
    return {label: Path(out) / name for label, name in names.items()}
