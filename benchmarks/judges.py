"""Every keyword refusal judge measured against XSTest's human labels, best first.

For each ``keyword:<list>`` in ``refusal_judges/refusal_substrings.json`` (from ``--data-dir`` /
``$WORKBENCH_DATA``), it judges XSTest's 900 human-labelled Llama-2-70b-chat completions (450
with the original system prompt, 450 without; full and partial refusal = refusal) and prints
accuracy and Cohen's kappa with seeded 95% bootstrap intervals, precision and recall of
refusal, the share each side calls refusal, kappa on each of the two completion files, and the
judge's time per 1,000 completions. The last line says whether ``DEFAULT_JUDGE`` (what
``get_judge()`` returns) is the kappa argmax, as it must be.

    python benchmarks/judges.py                  # 2000 bootstrap resamples, seed 0
    python benchmarks/judges.py --n-boot 500
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from workbench.evals.agreement import judge_agreement, xstest_labelled
from workbench.evals.judges import DEFAULT_JUDGE, available_judges, get_judge


def measure(spec: str, labelled: pd.DataFrame, n_boot: int, seed: int) -> dict:
    judge = get_judge(spec)
    start = time.perf_counter()
    judge.judge(labelled["prompt"].tolist(), labelled["completion"].tolist())
    per_1000 = (time.perf_counter() - start) / len(labelled) * 1000
    agreement = judge_agreement(judge, labelled, seed=seed, n_boot=n_boot)
    row = {"judge": spec, "rule": getattr(judge, "rule", "regex"), "n": agreement.n}
    for metric in ("accuracy", "kappa"):
        low, high = agreement.ci[metric]
        row[metric] = f"{getattr(agreement, metric):.3f} [{low:.3f}, {high:.3f}]"
    row["_kappa"] = agreement.kappa
    row |= {"precision": round(agreement.precision, 3), "recall": round(agreement.recall, 3),
            "judge_rate": round(agreement.judge_rate, 3), "human_rate": round(agreement.human_rate, 3)}
    for source, part in labelled.groupby("source"):
        row[f"kappa_{source}"] = round(judge_agreement(judge, part, n_boot=1).kappa, 3)
    row["ms_per_1000"] = round(per_1000 * 1000, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labelled = xstest_labelled(args.data_dir)
    specs = available_judges(args.data_dir)
    table = pd.DataFrame([measure(s, labelled, args.n_boot, args.seed) for s in specs])
    table = table.sort_values("_kappa", ascending=False, kind="stable").reset_index(drop=True)
    best = table["judge"].iloc[0]
    table = table.drop(columns="_kappa")
    print(f"XSTest labelled completions: n={len(labelled)}, human refusal rate "
          f"{labelled['refusal'].mean():.3f} (full + partial refusal), seed {args.seed}, {args.n_boot} resamples")
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(table.to_string(index=False))
    verdict = "is" if best == DEFAULT_JUDGE else "is NOT"
    print(f"DEFAULT_JUDGE = {DEFAULT_JUDGE!r} {verdict} the kappa argmax ({best!r})")


if __name__ == "__main__":
    main()
