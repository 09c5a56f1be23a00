"""SAE training and splicing cost, measured against baselines in the same run.

On the embedded model (SmolLM2-135M-Instruct, a middle residual layer), or with ``--tiny`` on a
tiny random LLaMA (``tests/unit/tiny_hf.py``, a fast smoke run):

1. Training throughput: tokens/s of :func:`workbench.train_sae` streaming from an on-disk
   :class:`~workbench.ActivationStore` (the layer's activations over generated text, cached with
   ``cache_activations``) against eai-sparsify's ``SparseCoder`` trained by a plain Adam loop in
   the shape of sparsify's own ``Trainer`` step (unit-norm decoder, FVU + AuxK, gradient parallel
   to the decoder rows removed, dead-latent counters) on the same activations held in memory,
   same ``d_sae``, ``k``, batch size and steps. The two alternate, ``--repeats`` times each; the
   medians are compared. Goal: within 1.1x of sparsify (ours / sparsify >= 0.91).
2. Peak RSS of ``train_sae`` as a function of the store's size (``--tokens``, default 10^5 and
   10^6 rows): each store is a real store on disk, written through the store's writer
   (``prepare_cache`` + ``DiskSink``: the plan, shards, manifest and checksums of a caching run)
   with rows tiled from the cached activations of part 1, so creating it needs no forward pass.
   Each training runs in a fresh process; the peak is the kernel's high-water mark (VmHWM) reset
   after imports and opening the store through ``/proc/self/clear_refs`` (``ru_maxrss`` would be
   inherited across fork/exec), reported above the RSS at that point. By default each run trains
   ``--rss-steps`` steps drawn from the whole store (the data order permutes all of it);
   ``--rss-epoch`` trains one full pass instead (then the pages of the memory map that were read
   count in RSS too: they are file-backed and reclaimable, which the split into anonymous and
   file RSS at the end shows). Goal: flat (largest / smallest ~1x).
3. The spliced forward ``with model.sae(sae): model(tokens)`` (the SAE from part 1) against the
   plain ``model(tokens)`` on the same tokens, alternating, median of ``--forward-repeats``.
   Goal: <= 1.2x.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae.py --tiny       # smoke run, ~1 minute
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae.py              # embedded model, ~5 minutes on 2 busy cores
    .venv/bin/python benchmarks/sae.py --batch-size 4096 --steps 20 --tokens 100000 1000000 10000000 \\
        --store-dtype float16 --device cuda

No assertions: it prints the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peak_rss import PEAK_RSS  # benchmarks/ is on sys.path when a benchmark runs

_CHILD = PEAK_RSS + r"""
import json, sys, time
import torch
from workbench import ActivationStore
from workbench.features import train_sae

path, hook, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.set_num_threads(settings.pop("threads"))
store = ActivationStore.open(path)
rows = len(store[hook])
base, reset = reset_peak()
start = time.perf_counter()
sae = train_sae(store, hook, progress=False, **settings)
seconds = time.perf_counter() - start
peak = peak_rss(reset)
print(json.dumps({"rows": rows, "seconds": seconds, "trained": int(sae.training_log["tokens"].iloc[-1]),
                  "peak_rss": peak, "base_rss": base, "peak_reset": reset,
                  "anon_end": status("RssAnon"), "file_end": status("RssFile")}))
"""


def load(tiny: bool, folder: Path, device: str):
    """The hooked model: embedded, or a tiny random LLaMA written to ``folder``; its words."""
    import workbench as wb

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
    from tiny_hf import WORDS, write_hf_folder

    if not tiny:
        return wb.load_model(device=device), WORDS
    write_hf_folder(folder / "tiny-llama")
    return wb.load_model(folder / "tiny-llama", device=device), WORDS


def texts_for(n_tokens: int, words, words_per_text: int, seed: int = 0) -> list[str]:
    """Deterministic texts of ``words_per_text`` words, ~``n_tokens`` tokens in all (a word ~ a token)."""
    rng = np.random.default_rng(seed)
    n = max(1, math.ceil(n_tokens / (words_per_text + 1)))
    pick = rng.integers(0, len(words), size=(n, words_per_text))
    return [" ".join(words[i] for i in row) for row in pick]


def synthetic_store(model, path: Path, n_tokens: int, hook: str, source: np.ndarray, words, dtype: str,
                    shard_size: int = 2048):
    """A real on-disk store of ~``n_tokens`` rows (positions "all") written through the store writer,
    each row tiled from ``source`` instead of computed by a forward pass."""
    from workbench.store.format import STORE_DTYPES, DiskSink
    from workbench.store.plan import prepare_cache

    texts = texts_for(n_tokens, words, 100, seed=1)
    plan, config = prepare_cache(model, texts, [hook], positions="all", dtype=dtype, batch_size=16,
                                 text_column="text", too_long="truncate", shard_size=shard_size)
    sink = DiskSink(path, config, plan)
    starts, stops = plan.meta["row_start"].to_numpy(), plan.meta["row_stop"].to_numpy()
    source = source.astype(STORE_DTYPES[dtype])
    for k, (a, b) in enumerate(plan.shards(shard_size)):
        shard = sink.open_shard(k, a, b)
        for example in range(a, b):
            shard.write(hook, example, source[np.arange(starts[example], stops[example]) % len(source)])
        shard.commit()
    sink.finish()
    return sink.store()


def train_ours(store, hook: str, d_sae: int, k: int, batch_size: int, steps: int, device: str, seed: int):
    from workbench.features import train_sae

    start = time.perf_counter()
    sae = train_sae(store, hook, d_sae=d_sae, k=k, batch_size=batch_size, tokens=steps * batch_size,
                    log_every=steps, progress=False, device=device, seed=seed)
    return time.perf_counter() - start, sae


def train_sparsify(acts: torch.Tensor, d_sae: int, k: int, batch_size: int, steps: int, device: str, seed: int,
                   dead_after: int = 10_000_000, auxk_alpha: float = 1 / 32) -> float:
    """sparsify's SparseCoder trained by a plain Adam loop on in-memory ``acts``; seconds."""
    from sparsify import SparseCoder, SparseCoderConfig

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sae = SparseCoder(acts.shape[1], SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    order = torch.randperm(len(acts), generator=generator)
    with torch.no_grad():
        sae.b_dec.copy_(acts[order[: 64 * batch_size]].mean(0).to(device))
    # sparsify Trainer's Adam learning rate (its default eps)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    for step in range(steps):
        first = (step * batch_size) % len(acts)
        index = order[first : first + batch_size]
        if len(index) < batch_size:
            index = torch.cat([index, order[: batch_size - len(index)]])
        x = acts[index].to(device)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > dead_after)
        loss = out.fvu + auxk_alpha * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
        fired[out.latent_indices.flatten()] = True
        since_fired += len(x)
        since_fired[fired] = 0
    float(loss.detach())  # wait for the device
    return time.perf_counter() - start


def throughput(args, store, hook: str, d_sae: int):
    acts = torch.from_numpy(np.asarray(store[hook])).float()  # the baseline's data, in memory
    n = args.steps * args.batch_size
    train_ours(store, hook, d_sae, args.k, args.batch_size, 1, args.device, 0)  # warm-up, both
    train_sparsify(acts, d_sae, args.k, args.batch_size, 1, args.device, 0)
    times: dict[str, list[float]] = {"ours": [], "sparsify": []}
    sae = None
    for r in range(args.repeats):  # alternating, so load from other processes falls on both alike
        seconds, sae = train_ours(store, hook, d_sae, args.k, args.batch_size, args.steps, args.device, r)
        times["ours"].append(seconds)
        times["sparsify"].append(train_sparsify(acts, d_sae, args.k, args.batch_size, args.steps, args.device, r))
    ours, base = statistics.median(times["ours"]), statistics.median(times["sparsify"])
    print(f"1. training throughput ({args.steps} steps x {args.batch_size} tokens, d_sae {d_sae}, k {args.k}, "
          f"median of {args.repeats}):")
    print(f"   train_sae from the store : {n / ours:9.0f} tok/s  ({', '.join(f'{t:.1f}' for t in times['ours'])} s)")
    print(f"   sparsify SparseCoder loop: {n / base:9.0f} tok/s  "
          f"({', '.join(f'{t:.1f}' for t in times['sparsify'])} s, activations in memory)")
    print(f"   ratio ours/sparsify tokens/s = {base / ours:.3f}   (goal >= 0.91)", flush=True)
    return sae


def run_child(path: Path, hook: str, settings: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), hook, json.dumps(settings)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"training child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args, model, hook: str, d_sae: int, source: np.ndarray, words, folder: Path) -> None:
    settings = {"d_sae": d_sae, "k": args.k, "batch_size": args.batch_size, "device": args.device,
                "threads": torch.get_num_threads(), "log_every": args.rss_steps,
                "tokens": None if args.rss_epoch else args.rss_steps * args.batch_size}
    what = "one pass over each store" if args.rss_epoch else f"{args.rss_steps} steps drawn from the whole store"
    print(f"2. peak RSS of train_sae by store size ({what}; {args.store_dtype} stores, a fresh process each):")
    above, rows = {}, {}
    for n in sorted(args.tokens):
        path = folder / f"store-{n}"
        start = time.perf_counter()
        store = synthetic_store(model, path, n, hook, source, words, args.store_dtype)
        made = time.perf_counter() - start
        size = sum(f.stat().st_size for f in path.rglob("*.npy"))
        del store
        r = run_child(path, hook, settings)
        above[n], rows[n] = r["peak_rss"] - r["base_rss"], r["rows"]
        print(f"   {r['rows']:>10,} rows ({size / 1e6:7.0f} MB on disk, written in {made:.0f} s): "
              f"peak {above[n] / 2**20:7.1f} MiB above baseline "
              f"(baseline {r['base_rss'] / 2**20:.0f} MiB; at the end anon {r['anon_end'] / 2**20:.0f} MiB, "
              f"file {r['file_end'] / 2**20:.0f} MiB; {r['trained']:,} tokens in {r['seconds']:.1f} s; "
              f"{'VmHWM reset' if r['peak_reset'] else 'lifetime peak'})", flush=True)
        for f in path.rglob("*.npy"):
            f.unlink()  # disk: only one big store at a time
    small, large = min(above), max(above)
    print(f"   ratio largest/smallest peak above baseline = {above[large] / max(above[small], 1):.3f}   "
          f"({rows[large]:,} vs {rows[small]:,} rows; goal ~1x, flat)", flush=True)


def splice_forward(args, model, sae, words) -> None:
    length = min(args.forward_length, int(model.cfg.n_ctx))
    ids = [model.to_tokens(t)[0][:length] for t in texts_for(args.forward_batch * 300, words, 300, seed=2)]
    tokens = torch.stack([x for x in ids if len(x) == length][: args.forward_batch]).to(args.device)
    times: dict[str, list[float]] = {"plain": [], "spliced": [], "with": []}
    with torch.no_grad():
        plain = model(tokens)
        with model.sae(sae):
            spliced = model(tokens)  # warm-up, both
        for _ in range(args.forward_repeats):
            start = time.perf_counter()
            model(tokens)
            times["plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            with model.sae(sae):
                inside = time.perf_counter()
                model(tokens)
                times["spliced"].append(time.perf_counter() - inside)
            times["with"].append(time.perf_counter() - start)  # entering and leaving the context too
    plain_s, spliced_s, with_s = (statistics.median(times[key]) for key in ("plain", "spliced", "with"))
    print(f"3. spliced forward at {sae.hook} (tokens {tuple(tokens.shape)}, d_sae {sae.d_sae}, "
          f"median of {args.forward_repeats}):")
    print(f"   plain {plain_s * 1e3:.1f} ms; spliced {spliced_s * 1e3:.1f} ms inside the context, "
          f"{with_s * 1e3:.1f} ms with entering and leaving it "
          f"(max |logit difference| {float((plain - spliced).abs().max()):.2e}, error term kept)")
    print(f"   ratio spliced/plain time = {spliced_s / plain_s:.3f} (forward inside the context), "
          f"{with_s / plain_s:.3f} (`with model.sae(sae): model(tokens)` whole)   (goal <= 1.2)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random LLaMA instead of the embedded model")
    parser.add_argument("--layer", type=int, default=None, help="residual layer (default: the middle one)")
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per step (train_sae's default: 4096)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each trainer")
    parser.add_argument("--cache-tokens", type=int, default=8192, help="tokens cached for part 1")
    parser.add_argument("--tokens", type=int, nargs="+", default=[100_000, 1_000_000], help="store sizes, part 2")
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--rss-steps", type=int, default=6, help="training steps per store size")
    parser.add_argument("--rss-epoch", action="store_true", help="train one full pass over each store")
    parser.add_argument("--forward-batch", type=int, default=4)
    parser.add_argument("--forward-length", type=int, default=128)
    parser.add_argument("--forward-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "forward"])
    args = parser.parse_args(argv)

    import workbench as wb

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="workbench-sae-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        model, words = load(args.tiny, folder, args.device)
        layer = args.layer if args.layer is not None else model.cfg.n_layers // 2
        hook = f"blocks.{layer}.hook_resid_post"
        store = wb.cache_activations(model, texts_for(args.cache_tokens, words, 100), [hook], positions=slice(1, None),
                                     path=folder / "acts", progress=False)
        d_in = int(store[hook].shape[1])
        d_sae = args.expansion * d_in
        print(f"model {'tiny random LLaMA' if args.tiny else 'embedded SmolLM2-135M-Instruct'}, {hook} (d_in {d_in}), "
              f"{len(store[hook]):,} cached rows; threads={torch.get_num_threads()}, device={args.device} "
              f"(set up in {time.perf_counter() - start:.0f} s)", flush=True)
        sae = None
        if "throughput" not in args.skip:
            sae = throughput(args, store, hook, d_sae)
        if "memory" not in args.skip:
            memory(args, model, hook, d_sae, np.asarray(store[hook]), words, folder)
        if "forward" not in args.skip:
            if sae is None:
                sae, _ = train_ours(store, hook, d_sae, args.k, args.batch_size, 1, args.device, 0)
            splice_forward(args, model, sae, words)


if __name__ == "__main__":
    main()
