"""How far a refusal judge agrees with human labels: accuracy, Cohen's kappa, confusion, with CIs.

The default labels are XSTest's two sets of human-labelled Llama-2-70b-chat completions
(``xstest/labelled_completions/``, Röttger et al. 2024): 2 x 450 completions, each with a
``final_label`` from two annotators. The mapping to a binary refusal is
:data:`XSTEST_MAPPING`: ``2_full_refusal`` and ``3_partial_refusal`` are refusals,
``1_full_compliance`` is not (XSTest counts a partial refusal as a refusal when it reports
refusal rates). Every interval is a seeded percentile bootstrap over completions
(:func:`workbench.evals.metrics.bootstrap_ci`'s resampling, all metrics on the same resamples).

Caveat: these are one model's completions (Llama-2-70b-chat, stock refusal phrases), and
XSTest's own keyword list was written by XSTest's authors for them, so a keyword judge's
agreement here is likely optimistic for a model with another refusal style, or one that opens
a compliant answer with an apology.

>>> from workbench.evals.agreement import judge_agreement
>>> agreement = judge_agreement("keyword:xstest_strmatch")            # doctest: +SKIP
>>> print(agreement)                                                  # doctest: +SKIP
keyword:xstest_strmatch agrees with XSTest human labels: accuracy 0.91 [0.89, 0.93], kappa 0.80 [0.75, 0.84] (n=900)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import DataError, MissingDataError
from workbench.evals.judges import Judge, check_verdicts, get_judge

XSTEST_FILES = (
    "xstest/labelled_completions/xstest_v2_completions_llama2orig.csv",
    "xstest/labelled_completions/xstest_v2_completions_llama2new.csv",
)
XSTEST_LABELS = {"1_full_compliance": False, "2_full_refusal": True, "3_partial_refusal": True}
XSTEST_MAPPING = "XSTest final_label: 2_full_refusal, 3_partial_refusal -> refusal; 1_full_compliance -> not"
XSTEST_NAME = "XSTest human labels"
METRICS = ("accuracy", "kappa", "precision", "recall", "human_rate", "judge_rate", "tp", "fp", "fn", "tn")
NAN = float("nan")


def xstest_labelled(data_dir=None) -> pd.DataFrame:
    """XSTest's labelled completions, one row each: ``example_id``, ``source``, ``id``, ``type``,
    ``prompt``, ``completion``, ``label`` (the ``final_label``) and ``refusal`` (its mapping).

    >>> xstest_labelled()["refusal"].mean()                   # doctest: +SKIP
    0.6922222222222222
    """
    root = resolve_data_dir(data_dir, needed_by="the XSTest labelled completions")
    frames = []
    for rel in XSTEST_FILES:
        path = root / rel
        if not path.is_file():
            raise MissingDataError(f"judge agreement reads {path}, which does not exist: put the published "
                                   "xstest/ folder in the data directory (set WORKBENCH_DATA; `workbench data pull` does not fetch it yet)",
                                   short=f"{rel} not found")
        frame = pd.read_csv(path, dtype={"completion": str, "prompt": str}, keep_default_na=False)
        missing = [c for c in ("id", "type", "prompt", "completion", "final_label") if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; it has {list(frame.columns)}")
        bad = ~frame["final_label"].isin(list(XSTEST_LABELS))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}, line {row + 2}: final_label {frame['final_label'].iloc[row]!r} is none "
                            f"of {sorted(XSTEST_LABELS)}")
        source = path.stem.removeprefix("xstest_v2_completions_")
        frames.append(pd.DataFrame({
            "example_id": [f"xstest_{source}:{i}" for i in frame["id"]], "source": source,
            "id": frame["id"], "type": frame["type"], "prompt": frame["prompt"], "completion": frame["completion"],
            "label": frame["final_label"], "refusal": frame["final_label"].map(XSTEST_LABELS).astype(bool)}))
    return pd.concat(frames, ignore_index=True)


def cohen_kappa(human, judged) -> float:
    """Cohen's kappa of two binary raters: ``(p_o - p_e) / (1 - p_e)`` (Cohen 1960).

    ``p_o`` is the observed agreement, ``p_e`` the agreement expected from the two raters'
    marginal rates; NaN when ``p_e == 1`` (both raters constant and equal).

    >>> cohen_kappa(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.5
    """
    return float(_metrics(_counts(np.asarray(human, bool), np.asarray(judged, bool))[None])["kappa"][0])


def _counts(human: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """``[tp, fp, fn, tn]`` with refusal as the positive class."""
    return np.array([(human & judged).sum(), (~human & judged).sum(), (human & ~judged).sum(),
                     (~human & ~judged).sum()])


def _metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric from confusion counts of shape ``[..., 4]`` (tp, fp, fn, tn); NaN where undefined."""
    tp, fp, fn, tn = (counts[..., i].astype(float) for i in range(4))
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o = (tp + tn) / n
        human_rate, judge_rate = (tp + fn) / n, (tp + fp) / n
        p_e = human_rate * judge_rate + (1 - human_rate) * (1 - judge_rate)
        kappa = np.where(p_e < 1, (p_o - p_e) / (1 - p_e), NAN)
        return {"accuracy": p_o, "kappa": kappa, "precision": tp / (tp + fp), "recall": tp / (tp + fn),
                "human_rate": human_rate, "judge_rate": judge_rate, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _bootstrap(human: np.ndarray, judged: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of every metric; the resamples of :func:`metrics.bootstrap_ci`."""
    n = len(human)
    if n < 2:
        return {m: (NAN, NAN) for m in METRICS}
    rng = np.random.default_rng(seed)
    codes = (~human).astype(int) + 2 * (~judged).astype(int)  # 0 tp, 1 fp, 2 fn, 3 tn
    counts = np.empty((n_boot, 4))
    for b in range(n_boot):  # one draw per resample, as bootstrap_ci does, so the intervals match it
        counts[b] = np.bincount(codes[rng.integers(0, n, n)], minlength=4)
    out = {}
    for metric, values in _metrics(counts).items():
        values = values[~np.isnan(values)]
        out[metric] = tuple(float(q) for q in np.quantile(values, [0.025, 0.975])) if values.size else (NAN, NAN)
    return out


@dataclass(frozen=True)
class Agreement:
    """A judge's agreement with human labels (refusal is the positive class).

    Attributes:
        judge: the judge's name; labels: what it was compared with; mapping: how labels became
            refusal / not.
        n: labelled completions; accuracy, kappa (Cohen's), precision and recall of refusal,
            human_rate and judge_rate (share called refusal by each), and ``ci[metric]`` the
            seeded 95% bootstrap interval of each.
        confusion: 2 x 2 counts, rows ``human``, columns ``judge``, both ``["refusal", "compliance"]``.
        examples: one row per completion: the labelled columns plus ``judged``, ``reason`` and ``agree``.
    """

    judge: str
    labels: str
    mapping: str
    n: int
    accuracy: float
    kappa: float
    precision: float
    recall: float
    human_rate: float
    judge_rate: float
    confusion: pd.DataFrame = field(repr=False)
    ci: dict[str, tuple[float, float]] = field(repr=False)
    examples: pd.DataFrame = field(repr=False)
    seed: int = 0
    n_boot: int = 2000

    @property
    def frame(self) -> pd.DataFrame:
        """One row per metric: ``judge, metric, value, ci_low, ci_high, n`` (counts as tp/fp/fn/tn)."""
        counts = dict(zip(("tp", "fp", "fn", "tn"), self.confusion.to_numpy().ravel()[[0, 2, 1, 3]], strict=True))
        values = {m: float(counts[m] if m in counts else getattr(self, m)) for m in METRICS}
        return pd.DataFrame([{"judge": self.judge, "metric": m, "value": values[m], "ci_low": self.ci[m][0],
                              "ci_high": self.ci[m][1], "n": self.n} for m in METRICS])

    def _fmt(self, metric: str) -> str:
        low, high = self.ci[metric]
        return f"{metric} {getattr(self, metric):.2f} [{low:.2f}, {high:.2f}]"

    def __str__(self) -> str:
        return (f"{self.judge} agrees with {self.labels}: {self._fmt('accuracy')}, {self._fmt('kappa')} "
                f"(n={self.n})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for a run's manifest): names, n, values and intervals, confusion."""
        return {"judge": self.judge, "labels": self.labels, "mapping": self.mapping, "n": self.n,
                "seed": self.seed, "n_boot": self.n_boot, "summary": str(self),
                "metrics": {r.metric: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
                            for r in self.frame.itertuples()},
                "confusion": {h: {j: int(v) for j, v in row.items()} for h, row in self.confusion.iterrows()}}


def _labelled_frame(labelled: Any) -> pd.DataFrame:
    if not isinstance(labelled, pd.DataFrame):
        raise DataError(f"labelled must be a DataFrame with prompt, completion, refusal; got {type(labelled).__name__}")
    if missing := [c for c in ("prompt", "completion", "refusal") if c not in labelled.columns]:
        raise DataError(f"labelled frame: no column(s) {missing}; it needs prompt, completion, refusal")
    refusal = labelled["refusal"]
    if refusal.isna().any() or not refusal.isin([True, False]).all():
        row = labelled.index[refusal.isna() | ~refusal.isin([True, False])][0]
        raise DataError(f"labelled frame, row {row!r}: refusal must be True/False, got {refusal[row]!r}")
    return labelled.reset_index(drop=True).assign(refusal=refusal.astype(bool).to_numpy())


def judge_agreement(judge: Judge | str, labelled: pd.DataFrame | None = None, *, data_dir=None,
                    seed: int = 0, n_boot: int = 2000) -> Agreement:
    """Measure ``judge`` (an object or a :func:`get_judge` spec) against human refusal labels.

    Args:
        judge: the judge, or its spec (``"keyword:xstest_strmatch"``).
        labelled: a DataFrame with ``prompt``, ``completion`` and boolean ``refusal`` (the human
            label); default: XSTest's 900 labelled completions (:func:`xstest_labelled`, full and
            partial refusal = refusal, :data:`XSTEST_MAPPING`).
        data_dir: where the XSTest files and keyword lists are.
        seed, n_boot: the bootstrap's seed and number of resamples.

    >>> labelled = pd.DataFrame({"prompt": ["a", "b"], "completion": ["Sorry, no.", "Sure."],
    ...                          "refusal": [True, False]})
    >>> judge_agreement("keyword:xstest_strmatch", labelled).accuracy    # doctest: +SKIP
    1.0
    """
    judge = get_judge(judge, data_dir=data_dir)
    if labelled is None:
        labelled, labels, mapping = xstest_labelled(data_dir), XSTEST_NAME, XSTEST_MAPPING
    else:
        labelled, labels, mapping = _labelled_frame(labelled), "the given human labels", "as given (refusal column)"
    verdicts = check_verdicts(judge.judge(labelled["prompt"].tolist(), labelled["completion"].tolist()),
                              len(labelled), judge.name)
    human, judged = labelled["refusal"].to_numpy(bool), verdicts["refusal"].to_numpy(bool)
    point = {m: float(v) for m, v in _metrics(_counts(human, judged)).items()}
    tp, fp, fn, tn = (int(point[c]) for c in ("tp", "fp", "fn", "tn"))
    names = pd.Index(["refusal", "compliance"])
    confusion = pd.DataFrame([[tp, fn], [fp, tn]], index=names.rename("human"), columns=names.rename("judge"))
    examples = labelled.assign(judged=judged, reason=verdicts["reason"].to_numpy(), agree=human == judged)
    return Agreement(judge=judge.name, labels=labels, mapping=mapping, n=len(labelled),
                     **{m: point[m] for m in ("accuracy", "kappa", "precision", "recall", "human_rate", "judge_rate")},
                     confusion=confusion, ci=_bootstrap(human, judged, n_boot, seed), examples=examples,
                     seed=seed, n_boot=n_boot)
