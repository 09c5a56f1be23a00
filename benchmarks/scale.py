"""Throughput of activation caching: one process vs 1 and 2 local Ray workers, same run.

Caches ``blocks.*.hook_resid_post`` (last position) for ``--n`` texts from the shared ToxiGen
prompt files (or generated sentences when no data directory is found) into a fresh store, three
ways, each timed from the call to the finished store:

- ``single``: :func:`workbench.cache_activations` in this process with ``--threads`` torch threads
  (model load excluded: it is loaded before the clock starts, as a notebook user would have it);
- ``ray x1`` / ``ray x2``: :func:`workbench.distributed.cache_activations_ray` on a private local Ray
  instance with 1 and 2 workers of ``--threads`` threads each (the clock includes starting Ray,
  loading one model replica per worker and merging the manifest: the real cost of the Ray path).

It prints tokens/s for each, the ratios to ``single``, and the overhead of the Ray path at one
worker (goal: at most 15% slower than ``single``). On a 2-core machine two workers cannot be
much faster than one.

    python benchmarks/scale.py --n 2000
    python benchmarks/scale.py --n 20000 --shard-size 2000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def texts(n: int) -> list[str]:
    data = Path(os.environ.get("WORKBENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    lines: list[str] = []
    for file in sorted((data / "toxigen" / "prompts").glob("*.txt")):
        for raw in file.read_text(encoding="utf-8").splitlines():
            lines.extend(s.strip("- ").strip() for s in raw.split("\\n") if s.strip("- ").strip())
            if len(lines) >= n:
                return lines[:n]
    subjects, verbs = ["The cat", "A teacher", "My neighbour", "The river"], ["sleeps", "sings", "waits", "runs"]
    while len(lines) < n:
        i = len(lines)
        lines.append(f"{subjects[i % 4]} {verbs[(i // 4) % 4]} near house number {i}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: embedded model)")
    parser.add_argument("--n", type=int, default=2000, help="texts to cache")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, per worker")
    args = parser.parse_args(argv)

    import workbench as wb
    from workbench.distributed import cache_activations_ray

    corpus = texts(args.n)
    options = dict(hooks="blocks.*.hook_resid_post", positions="last", batch_size=args.batch_size,
                   shard_size=args.shard_size)
    root = Path(tempfile.mkdtemp(prefix="wb-scale-"))
    results = {}
    try:
        model = wb.load_model(args.model, device="cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        store = wb.cache_activations(model, corpus, path=root / "single", progress=False, **options)
        results["single"] = time.perf_counter() - start
        torch.set_num_threads(threads)
        n_tokens = int(store.meta["n_tokens"].sum())
        del model
        for workers in (1, 2):
            start = time.perf_counter()
            cache_activations_ray(args.model, corpus, path=root / f"ray{workers}", workers=workers,
                                  threads=args.threads, device="cpu", progress=False, **options)
            results[f"ray x{workers}"] = time.perf_counter() - start
        for workers in (1, 2):
            same = all((root / "single" / "shards" / s.name / f.name).read_bytes() == f.read_bytes()
                       for s in (root / f"ray{workers}" / "shards").iterdir() for f in s.iterdir())
            print(f"ray x{workers} store byte-identical to single: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.n} texts, {n_tokens} tokens, shards of {args.shard_size}, {args.threads} thread(s) per worker, "
          f"{os.cpu_count()} CPUs")
    for name, seconds in results.items():
        print(f"  {name:8s} {seconds:7.1f} s  {n_tokens / seconds:8.0f} tokens/s  "
              f"ratio to single {results['single'] / seconds:.2f}")
    print(f"  Ray overhead at 1 worker: {results['ray x1'] / results['single'] - 1:+.1%} (goal <= +15%)")


if __name__ == "__main__":
    main()
