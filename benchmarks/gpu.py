"""GPU figures for the embedded model: one script, nothing needed but the project and CUDA torch.

Loads the embedded SmolLM2-135M in bfloat16 on the GPU and prints, each measured in this run:

1. forward tokens/s of the workbench model (no hooks) vs a plain Hugging Face ``LlamaForCausalLM``
   (SDPA attention) holding the same weights, and their ratio;
2. activation caching (``cache_activations``, ``blocks.*.hook_resid_post``, all positions, in
   memory) tokens/s, and its ratio to the workbench forward;
3. the wall time of a full ``resid_pre`` patch sweep on an IOI prompt pair (30 layers x 15
   positions), and of TransformerLens's ``get_act_patch_resid_pre`` on the same pair;
4. CrowS-Pairs throughput (pairs/s) with ``wb.run_eval`` when the data directory
   (``WORKBENCH_DATA``) has ``crows_pairs/`` (skipped, saying so, when not).

It is not part of the test suite (CI has no GPU). ``--device cpu`` runs the same steps on the
CPU with smaller sizes, to check the script itself.

    python benchmarks/gpu.py
    python benchmarks/gpu.py --batch 32 --seq 512 --repeats 10
    python benchmarks/gpu.py --device cpu --batch 2 --seq 64 --repeats 2   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up (synchronised on CUDA)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--crows-limit", type=int, default=None, help="CrowS-Pairs pairs (default: all)")
    parser.add_argument("--sweep-layers", type=int, default=None, help="patch only the first N layers (default: all)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script needs a CUDA build of torch and a GPU (or --device cpu)")

    from forward import reference_hf_model  # benchmarks/forward.py: same weights, plain HF
    from transformer_lens import patching

    import workbench as wb

    model = wb.load_model(dtype=args.dtype, device=args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {name}, dtype {args.dtype}, batch {args.batch} x {args.seq} tokens, median of {args.repeats}")
    tokens = torch.randint(100, model.cfg.d_vocab, (args.batch, args.seq), device=args.device)
    n_tokens = tokens.numel()

    hf = reference_hf_model(model).to(dtype=model.dtype)
    hf.config._attn_implementation = "sdpa"
    with torch.no_grad():
        t_hf = timed(functools.partial(hf, tokens), args.repeats, args.device)
        t_wb = timed(lambda: model(tokens), args.repeats, args.device)
    del hf
    print(f"1. forward: workbench {n_tokens / t_wb:,.0f} tok/s, HF sdpa {n_tokens / t_hf:,.0f} tok/s, "
          f"time ratio workbench / HF {t_wb / t_hf:.2f}")

    texts = [model.to_string(row) for row in tokens[:, 1:].cpu()]
    t_cache = timed(lambda: wb.cache_activations(model, texts, hooks="blocks.*.hook_resid_post", positions="all",
                                                 batch_size=args.batch, too_long="truncate", progress=False),
                    max(1, args.repeats // 2), args.device)
    print(f"2. caching resid_post (30 hooks, all positions): {n_tokens / t_cache:,.0f} tok/s, "
          f"{t_wb / t_cache:.2f}x the forward's throughput")

    metric = wb.logit_diff(model, " Mary", " John")
    layers = list(range(args.sweep_layers or model.cfg.n_layers))
    start = time.perf_counter()
    res = wb.patch_sweep(model, CLEAN, CORRUPT, metric, site="resid_pre", layers=layers, progress=False)
    t_sweep = time.perf_counter() - start
    clean_tokens, corrupt_tokens = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    index = pd.DataFrame([(l, p) for l in layers for p in range(clean_tokens.shape[1])], columns=["layer", "pos"])
    start = time.perf_counter()
    with torch.no_grad():
        _, clean_cache = model.bridge.run_with_cache(clean_tokens)
        tl = patching.get_act_patch_resid_pre(model.bridge, corrupt_tokens, clean_cache, metric, index_df=index,
                                              index_axis_names=None).reshape(res.raw.shape)
    t_tl = time.perf_counter() - start
    print(f"3. resid_pre patch sweep ({res.values.numel()} cells): workbench {t_sweep:.2f} s, "
          f"TransformerLens {t_tl:.2f} s ({t_tl / t_sweep:.1f}x); max |diff| {(res.raw - tl.float().cpu()).abs().max():.2e}")

    data = Path(os.environ.get("WORKBENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if (data / "crows_pairs").is_dir():
        start = time.perf_counter()
        result = wb.run_eval(model, "crows_pairs", data_dir=data, limit=args.crows_limit, progress=False)
        seconds = time.perf_counter() - start
        n = len(result.samples)
        value = result.metrics.query("metric == 'pct_stereotype'")["value"].iloc[0]
        print(f"4. CrowS-Pairs: {n} pairs in {seconds:.1f} s = {n / seconds:.1f} pairs/s (pct_stereotype {value:.3f})")
    else:
        print(f"4. CrowS-Pairs: skipped, no crows_pairs/ under {data} (set WORKBENCH_DATA)")


if __name__ == "__main__":
    main()
