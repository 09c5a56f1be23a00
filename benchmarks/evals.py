"""Eval throughput against lm-evaluation-harness, same model folder, same rows, same run.

For CrowS-Pairs (goal >= 1.5x) and TruthfulQA MC1 + MC2 (goal >= 3x): the workbench's
``run_eval`` and lm-evaluation-harness's Hugging Face backend (``HFLM``) score the same rows of
the same data files with the same model folder (the embedded model's cached safetensors, or
``--model``). Each side runs ``--repeats`` times (default once), alternating, after a two-row
warm-up; the script prints both throughputs (examples/s, from the median time), the ratio, and
whether the scores are equal.

lm-eval is a benchmark-only tool, not a dependency: ``.venv/bin/pip install lm-eval`` (pin
torch/transformers with ``-c`` so it installs nothing else over them). The data comes from
``--data-dir`` / ``$WORKBENCH_DATA``; the first ``--limit`` rows of each file are written to a
temporary folder that both sides read (TruthfulQA's ``mc_task.json`` is also written in the
Hugging Face ``truthful_qa`` layout lm-eval expects, answers in the file's order).

    .venv/bin/python benchmarks/evals.py --limit 200
    .venv/bin/python benchmarks/evals.py --suites crows_pairs --limit 100 --lm-eval-batch-size 8
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GOALS = {"crows_pairs": 1.5, "truthfulqa_mc": 3.0}
# score name here -> (lm-eval task, lm-eval metric); tolerances: summed float32 log-likelihoods
# from two batching schemes differ in the last bits.
SCORES = {
    "crows_pairs": {"pct_stereotype": ("crows_pairs_bench", "pct_stereotype"),
                    "likelihood_diff": ("crows_pairs_bench", "likelihood_diff")},
    "truthfulqa_mc": {"mc1": ("truthfulqa_mc1_bench", "acc"), "mc2": ("truthfulqa_mc2_bench", "acc")},
}
TOLERANCE = 1e-3


def subset_data(src: Path, dst: Path, limit: int | None) -> dict[str, int]:
    """First ``limit`` rows of the CrowS-Pairs CSV and TruthfulQA v0 MC file, in both layouts."""
    (dst / "crows_pairs").mkdir(parents=True)
    with open(src / "crows_pairs/crows_pairs_anonymized.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1 : None if limit is None else limit + 1]
    with open(dst / "crows_pairs/crows_pairs_anonymized.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *body])
    (dst / "truthfulqa/v0").mkdir(parents=True)
    questions = json.loads((src / "truthfulqa/v0/mc_task.json").read_text(encoding="utf-8"))[:limit]
    (dst / "truthfulqa/v0/mc_task.json").write_text(json.dumps(questions), encoding="utf-8")
    with open(dst / "truthfulqa_hf.jsonl", "w", encoding="utf-8") as fh:  # lm-eval's layout
        for q in questions:
            fh.write(json.dumps({"question": q["question"], **{
                key: {"choices": list(q[key]), "labels": list(q[key].values())}
                for key in ("mc1_targets", "mc2_targets")}}) + "\n")
    return {"crows_pairs": len(body), "truthfulqa_mc": len(questions)}


def lm_eval_tasks(data: Path, suite: str) -> list[dict]:
    """lm-eval's own task configs (crows_pairs_english, truthfulqa_mc1/2) pointed at local files."""
    import yaml
    from lm_eval.tasks.crows_pairs import utils as crows_utils
    from lm_eval.tasks.truthfulqa import utils as tqa_utils

    tasks_dir = Path(crows_utils.__file__).parents[1]
    if suite == "crows_pairs":
        return [{"task": "crows_pairs_bench", "dataset_path": "csv",
                 "dataset_kwargs": {"data_files": {"test": str(data / "crows_pairs/crows_pairs_anonymized.csv")}},
                 "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "", "doc_to_target": 0,
                 "doc_to_choice": crows_utils.doc_to_choice, "target_delimiter": "",
                 "process_results": crows_utils.process_results,
                 "metric_list": [{"metric": "likelihood_diff", "aggregation": "mean", "higher_is_better": False},
                                 {"metric": "pct_stereotype", "aggregation": "mean", "higher_is_better": False}]}]

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: None)  # only doc_to_text is read
    mc1 = yaml.load((tasks_dir / "truthfulqa/truthfulqa_mc1.yaml").read_text(), Loader=_Loader)
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": str(data / "truthfulqa_hf.jsonl")}},
              "validation_split": "validation", "output_type": "multiple_choice", "num_fewshot": 0,
              "doc_to_text": mc1["doc_to_text"], "doc_to_target": 0}
    acc = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    return [{"task": "truthfulqa_mc1_bench", **common, "doc_to_choice": "{{mc1_targets.choices}}", "metric_list": acc},
            {"task": "truthfulqa_mc2_bench", **common, "doc_to_choice": "{{mc2_targets.choices}}",
             "process_results": tqa_utils.process_results_mc2, "metric_list": acc}]


def run_lm_eval(lm, data: Path, suite: str, limit: int | None = None) -> tuple[dict, float]:
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=lm_eval_tasks(data, suite), limit=limit, log_samples=False,
                          bootstrap_iters=0, verbosity="ERROR")
    seconds = time.perf_counter() - start
    results = out["results"]
    scores = {}
    for name, (task, metric) in SCORES[suite].items():
        scores[name] = float(results[task][f"{metric},none"])
    return scores, seconds


def run_workbench(model, data: Path, suite: str, limit: int | None = None) -> tuple[dict, float]:
    import workbench as wb

    start = time.perf_counter()
    res = wb.run_eval(model, suite, data_dir=data, limit=limit, progress=False)
    seconds = time.perf_counter() - start
    return {name: res.metric(name) for name in SCORES[suite]}, seconds


def crows_positions(model, data: Path, batch_size: int) -> dict[str, int]:
    """Token positions each side runs on the CrowS-Pairs sentences of ``data``.

    ``lm_eval``: one input per sentence, batches of ``batch_size`` sorted by length and padded
    to their longest (lm-eval's ``Collator``); ``workbench``: the packed prefix-tree rows, padded
    to their batch's widest row; ``distinct_prefixes``: every distinct token prefix once, the
    fewest positions any exact sharing of computation can run (a position's activations depend
    on its whole prefix)."""
    from workbench.evals.loglik import BATCH_TOKENS, MAX_BATCH, ROW_TOKENS, _batches, _pack_rows, encode_pair

    with open(data / "crows_pairs/crows_pairs_anonymized.csv", newline="", encoding="utf-8") as fh:
        sentences = [row[k] for row in csv.DictReader(fh) for k in ("sent_more", "sent_less")]
    inputs = []
    for text in sentences:
        enc = encode_pair(model.tokenizer, "", text, add_bos=model.tokenizer_adds_bos)
        inputs.append(enc.context + enc.continuation[:-1])
    lengths = sorted(map(len, inputs), reverse=True)
    lm_eval = sum(len(b) * max(b) for b in (lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)))
    rows = _pack_rows(sorted(set(inputs)), ROW_TOKENS)
    packed = sum(len(b) * max(len(rows[i].tokens) for i in b)
                 for b in _batches(range(len(rows)), lambda i: len(rows[i].tokens), BATCH_TOKENS, MAX_BATCH))
    prefixes = {seq[:k] for seq in inputs for k in range(1, len(seq) + 1)}
    return {"lm_eval": lm_eval, "workbench": packed, "distinct_prefixes": len(prefixes)}


def _seconds(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.1f} s"
    return f"median of {', '.join(f'{t:.1f}' for t in times)} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each dataset (default: all)")
    parser.add_argument("--suites", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--model", default=None, help="HF model folder (default: the embedded model's cache)")
    parser.add_argument("--data-dir", default=None, help="benchmark data (default: $WORKBENCH_DATA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lm-eval-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measured runs per side, alternating; the median time counts (default: 1)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import workbench as wb
    from workbench.common.data_dir import resolve_data_dir

    model = wb.load_model(args.model, device=args.device)
    if args.model:
        folder = Path(args.model)
    else:
        from workbench.models.embedded import converted_embedded_model

        folder = converted_embedded_model(model.source.fingerprint, progress=False)
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("lm-eval is not installed: .venv/bin/pip install lm-eval (benchmark only)", file=sys.stderr)
        return 2
    lm = HFLM(pretrained=str(folder), device=args.device, dtype="float32", batch_size=args.lm_eval_batch_size)

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        counts = subset_data(resolve_data_dir(args.data_dir), data, args.limit)
        print(f"model folder {folder}; device {args.device}; torch threads {torch.get_num_threads()}; "
              f"lm-eval HFLM batch size {args.lm_eval_batch_size}")
        for suite in args.suites:
            run_workbench(model, data, suite, limit=2)  # warm-up, not measured
            run_lm_eval(lm, data, suite, limit=2)
            times_ours, times_theirs = [], []
            for _ in range(args.repeats):  # alternating, so drift in machine speed hits both sides
                ours, t = run_workbench(model, data, suite)
                times_ours.append(t)
                theirs, t = run_lm_eval(lm, data, suite)
                times_theirs.append(t)
            t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
            n = counts[suite]
            ratio = (n / t_ours) / (n / t_theirs)
            equal = all(abs(ours[k] - theirs[k]) <= TOLERANCE for k in ours)
            failed |= not equal
            print(f"\n{suite}: {n} examples")
            print(f"  workbench run_eval     {n / t_ours:8.2f} examples/s  ({_seconds(times_ours)})")
            print(f"  lm-eval HFLM           {n / t_theirs:8.2f} examples/s  ({_seconds(times_theirs)})")
            print(f"  ratio                  {ratio:8.2f}x  (goal >= {GOALS[suite]}x: "
                  f"{'met' if ratio >= GOALS[suite] else 'NOT met'})")
            for k in ours:
                print(f"  {k:<22} workbench {ours[k]:.6f}  lm-eval {theirs[k]:.6f}  "
                      f"|diff| {abs(ours[k] - theirs[k]):.2e}")
            print(f"  scores equal (|diff| <= {TOLERANCE}): {'yes' if equal else 'NO'}")
            if suite == "crows_pairs":
                pos = crows_positions(model, data, args.lm_eval_batch_size)
                print(f"  positions run          lm-eval {pos['lm_eval']} (padded), workbench {pos['workbench']} "
                      f"(packed rows, padded), distinct prefixes {pos['distinct_prefixes']}")
                print(f"  exact-sharing bound    {pos['lm_eval'] / pos['distinct_prefixes']:.2f}x at equal cost "
                      f"per position (positions ratio now {pos['lm_eval'] / pos['workbench']:.2f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
