"""Activation caching cost, measured against baselines in the same run.

1. Throughput: caching ``blocks.*.hook_resid_post`` (all 30 layers, ``positions="all"``,
   float16, on disk) vs the plain forward pass over the same batches. Goal: >= 0.85x the
   forward's tokens/s.
2. Memory: peak RSS of a caching job over ~10k vs ~100k tokens (each in a fresh process).
   Goal: flat (within 10%). For comparison, the peak RSS of keeping TransformerLens
   ``run_with_cache`` results for the same hooks over ~10k tokens.

    .venv/bin/python benchmarks/cache.py                 # embedded model, all measurements
    .venv/bin/python benchmarks/cache.py --skip-memory   # throughput only

3. Memory at dataset scale (``--scale``): peak RSS of caching one cheap hook
   (``blocks.0.hook_resid_post``, ``positions="last"``) over 10^4, 10^5 and 10^6 tokens of real
   text (``--corpus``, default ``../shared/data/corpus``), each in a fresh process, and the growth
   per 10^5 tokens between the smallest and the largest run. Goal: under 5 MiB per 10^5 tokens
   (the job's memory is O(shard), not O(dataset)).

    .venv/bin/python benchmarks/cache.py --scale --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HOOKS = "blocks.*.hook_resid_post"
WORDS = ("the model reads a long sentence about cities rivers history science music and people "
         "who travel between countries while talking about weather food and the news of the day").split()


def texts_for(n_tokens: int, tokens_per_text: int = 128) -> list[str]:
    """Deterministic texts of about ``tokens_per_text`` tokens each, ~``n_tokens`` in total."""
    import random

    rng = random.Random(0)
    n_texts = max(1, n_tokens * 4 // (3 * tokens_per_text))  # texts average ~3/4 of the maximum
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(tokens_per_text // 2, tokens_per_text)))
            for _ in range(n_texts)]


def throughput(model_arg, n_tokens: int, batch_size: int, repeats: int) -> None:
    import workbench as wb

    model = wb.load_model(model_arg, device="cpu")
    texts = texts_for(n_tokens)
    n_real = sum(len(model.to_tokens(t)[0]) for t in texts)
    batches = _batches(model, texts, batch_size)

    def plain_forward():
        with torch.no_grad():
            for tokens in batches:
                model(tokens)

    def caching():
        with tempfile.TemporaryDirectory() as folder:
            wb.cache_activations(model, texts, hooks=HOOKS, positions="all", path=f"{folder}/s",
                                 dtype="float16", batch_size=batch_size, progress=False)

    plain_forward()  # warm-up
    times = {"forward": [], "cache": []}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for name, fn in (("forward", plain_forward), ("cache", caching)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    fwd, cache = statistics.median(times["forward"]), statistics.median(times["cache"])
    print(f"threads={torch.get_num_threads()} texts={len(texts)} tokens={n_real} batch={batch_size}")
    print(f"forward : {n_real / fwd:8.0f} tok/s  (median of {repeats})")
    print(f"cache   : {n_real / cache:8.0f} tok/s  ({HOOKS}, positions=all, float16, on disk)")
    print(f"ratio cache/forward tokens/s = {fwd / cache:.3f}   (goal >= 0.85)")


def _batches(model, texts, batch_size):
    # The same length-sorted, right-padded batches the store builds.
    ids = sorted((model.to_tokens(t)[0] for t in texts), key=len, reverse=True)
    out = []
    for b in range(0, len(ids), batch_size):
        chunk = ids[b : b + batch_size]
        tokens = torch.full((len(chunk), len(chunk[0])), model.tokenizer.pad_token_id or 0)
        for j, x in enumerate(chunk):
            tokens[j, : len(x)] = x
        out.append(tokens)
    return out


def child(mode: str, model_arg, n_tokens: int, batch_size: int) -> None:
    """Run one job and print its peak RSS (MiB) as JSON: runs in a fresh process."""
    import workbench as wb

    model = wb.load_model(model_arg, device="cpu")
    texts = texts_for(n_tokens)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_real = 0
    if mode == "store":
        with tempfile.TemporaryDirectory() as folder:
            store = wb.cache_activations(model, texts, hooks=HOOKS, positions="all", path=f"{folder}/s",
                                         dtype="float16", batch_size=batch_size, progress=False)
            n_real = int(store.meta["n_tokens"].sum())
    else:  # what one does without a store: keep each batch's run_with_cache result
        kept = []
        with torch.no_grad():
            for b in range(0, len(texts), batch_size):
                _, cache = model.run_with_cache(texts[b : b + batch_size], names_filter=HOOKS)
                kept.append(cache)
                n_real += cache["blocks.0.hook_resid_post"].shape[:2].numel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "tokens": n_real, "peak_mib": peak, "after_load_mib": base}))


def corpus_texts(folder: str, n_tokens: int, tokenizer, tokens_per_text: int = 96) -> list[str]:
    """About ``n_tokens`` tokens of the corpus's text files (sorted by name; names have spaces) as
    texts of ``tokens_per_text`` tokens or slightly fewer: the token stream is cut into chunks and
    decoded, and a chunk whose text re-encodes longer is left out. Every run then has batches
    of the same width, so the forward pass's peak is the same and what differs is the dataset."""
    files = sorted(p for p in Path(folder).rglob("*.txt") if p.is_file())
    if not files:
        raise SystemExit(f"--corpus {folder}: no .txt files under it")
    texts, total = [], 0
    for file in files:
        words = " ".join(file.read_text(encoding="utf-8", errors="replace").split())
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - tokens_per_text, tokens_per_text):
            text = tokenizer.decode(ids[start : start + tokens_per_text])
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if length <= tokens_per_text:
                texts.append(text)
                total += length + 1  # + BOS
            if total >= n_tokens:
                return texts
    raise SystemExit(f"--corpus {folder}: holds fewer than ~{n_tokens} tokens")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def scale_child(model_arg, corpus: str, n_tokens: int, batch_size: int, hook: str) -> None:
    """One caching job over ``n_tokens`` of the corpus; prints its RSS (MiB) as JSON.

    ``ru_maxrss`` never goes down, so preparing the texts would hide the job's own peak: a
    thread samples the current RSS every 5 ms while the job runs, and the job's peak is
    reported over the RSS just before it started.
    """
    import ctypes
    import gc
    import threading

    import workbench as wb

    model = wb.load_model(model_arg, device="cpu")
    texts = corpus_texts(corpus, n_tokens, model.tokenizer)
    # The base is what the job starts from: the weights paged in by one forward (a memory-mapped
    # checkpoint is resident only once used) and the heap the text preparation freed handed
    # back (malloc_trim), so what grows from it is the job's own memory.
    with torch.no_grad():
        model(model.to_tokens(texts[0]))
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _rss_mib()
    peak, running = [base], True

    def sample():
        while running:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        store = wb.cache_activations(model, texts, hooks=hook, positions="last", path=f"{folder}/s",
                                     dtype="float16", batch_size=batch_size, progress=False)
        n_real = int(store.meta["n_tokens"].sum())
        running = False
        sampler.join()
    print(json.dumps({"tokens": n_real, "texts": len(texts), "peak_mib": peak[0], "after_load_mib": base,
                      "seconds": time.perf_counter() - started}))


def scale(model_arg, corpus: str, sizes: list[int], batch_size: int, hook: str) -> None:
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", "scale", "--tokens", str(n), "--batch-size", str(batch_size),
               "--corpus", corpus, "--hook", hook] + (["--model", model_arg] if model_arg else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['tokens']:>9} tokens ({r['texts']} texts): peak RSS {r['peak_mib']:.1f} MiB "
              f"(after loading model and texts {r['after_load_mib']:.1f}; growth {r['peak_mib'] - r['after_load_mib']:.1f}) "
              f"in {r['seconds']:.0f} s", flush=True)
    first, last = rows[0], rows[-1]
    if len(rows) > 1 and last["tokens"] > first["tokens"]:
        growth = (last["peak_mib"] - first["peak_mib"]) / (last["tokens"] - first["tokens"]) * 1e5
        during = ((last["peak_mib"] - last["after_load_mib"]) - (first["peak_mib"] - first["after_load_mib"])) / (
            last["tokens"] - first["tokens"]) * 1e5
        print(f"peak RSS growth: {growth:.2f} MiB per 10^5 tokens ({during:.2f} MiB per 10^5 tokens during "
              f"caching, the input texts excluded)  (goal < 5)")


def memory(model_arg, batch_size: int, small: int, large: int) -> None:
    def run(mode, n):
        cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(n), "--batch-size", str(batch_size)]
        if model_arg:
            cmd += ["--model", model_arg]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    a, b, tl = run("store", small), run("store", large), run("tl", small)
    print(f"store peak RSS: {a['peak_mib']:.0f} MiB at {a['tokens']} tokens, {b['peak_mib']:.0f} MiB at "
          f"{b['tokens']} tokens: ratio {b['peak_mib'] / a['peak_mib']:.3f}  (goal <= 1.10)")
    print(f"  (model loaded: {a['after_load_mib']:.0f} MiB; growth during caching: "
          f"{a['peak_mib'] - a['after_load_mib']:.0f} vs {b['peak_mib'] - b['after_load_mib']:.0f} MiB)")
    print(f"TL run_with_cache kept in memory, {tl['tokens']} tokens: peak RSS {tl['peak_mib']:.0f} MiB "
          f"(growth {tl['peak_mib'] - tl['after_load_mib']:.0f} MiB; store {a['peak_mib'] - a['after_load_mib']:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens for the throughput run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--scale", action="store_true", help="only the dataset-scale memory runs (see 3.)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"))
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--child", choices=["store", "tl", "scale"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "scale":
        scale_child(args.model, args.corpus, args.tokens, args.batch_size, args.hook)
        return
    if args.scale:
        scale(args.model, args.corpus, args.sizes, args.batch_size, args.hook)
        return
    if args.child:
        child(args.child, args.model, args.tokens, args.batch_size)
        return
    throughput(args.model, args.tokens, args.batch_size, args.repeats)
    if not args.skip_memory:
        memory(args.model, args.batch_size, args.small, args.large)


if __name__ == "__main__":
    main()
