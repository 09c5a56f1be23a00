"""Speed of a full activation-patching sweep: workbench against TransformerLens, same run.

Both compute the same ``[n_layers, n_pos]`` table of a denoising ``resid_pre`` sweep on the IOI
prompt pair below, with the logit difference " Mary" - " John" as the metric:

- ``transformer_lens``: ``transformer_lens.patching.get_act_patch_resid_pre`` on the model's
  bridge (one full forward per cell), under ``torch.no_grad()``;
- ``workbench``: :func:`workbench.patch_sweep` (cells batched, each layer's batch started at
  that layer from the recorded corrupted run, and for position-resolved sites only positions
  from the patched one on, on the recorded keys/values of the positions before it);
- with ``--full-path``, also ``workbench_full``: the same sweep with ``reuse_prefix=False``
  (every cell runs every position), and its largest difference from the prefix-reusing one.

It prints each one's wall and CPU time, the ratio TransformerLens / workbench (goal >= 10x), the
largest difference between the two tables (must be <= 1e-4), and the cells that restore the
most. The two are interleaved ``--repeats`` times (TL, workbench, workbench, TL, ...) so that
background load hits both alike; the ratio of the medians is the figure.

    python benchmarks/patching.py                      # embedded SmolLM2-135M, full sweep
    python benchmarks/patching.py --layers 0 10 20     # a quicker partial sweep
    python benchmarks/patching.py --site head_out      # TL: get_act_patch_attn_head_out_all_pos
    python benchmarks/patching.py --full-path          # also time reuse_prefix=False
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "head_out": "get_act_patch_attn_head_out_all_pos",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: embedded model)")
    parser.add_argument("--site", default="resid_pre", choices=sorted(TL_FUNCTIONS))
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="default: every layer")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full-path", action="store_true", help="also time patch_sweep(reuse_prefix=False)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformer_lens import patching

    import workbench as wb

    model = wb.load_model(args.model)
    metric = wb.logit_diff(model, " Mary", " John")
    clean_tokens, corrupt_tokens = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    layers = args.layers if args.layers is not None else list(range(model.cfg.n_layers))
    second_axis = "head" if args.site == "head_out" else "pos"
    width = model.cfg.n_heads if second_axis == "head" else clean_tokens.shape[1]
    index = pd.DataFrame([(l, i) for l in layers for i in range(width)], columns=["layer", second_axis])
    tl_function = getattr(patching, TL_FUNCTIONS[args.site])

    def run_tl():
        with torch.no_grad():
            _, clean_cache = model.bridge.run_with_cache(clean_tokens)
            flat = tl_function(model.bridge, corrupt_tokens, clean_cache, metric, index_df=index,
                               index_axis_names=None)
        return flat.reshape(len(layers), width).cpu()

    def run_wb(reuse_prefix=True):
        return wb.patch_sweep(model, CLEAN, CORRUPT, metric, site=args.site, layers=layers, progress=False,
                              reuse_prefix=reuse_prefix)

    timings = {"transformer_lens": [], "workbench": []}
    order = [("transformer_lens", run_tl), ("workbench", run_wb)]
    if args.full_path:
        timings["workbench_full"] = []
        order.append(("workbench_full", lambda: run_wb(reuse_prefix=False)))
    results = {}
    for r in range(args.repeats):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))

    res = results["workbench"]
    diff = (res.raw - results["transformer_lens"]).abs().max().item()
    print(f"{args.site} sweep: {len(layers)} layers x {width} {second_axis}s = {len(index)} cells, "
          f"{clean_tokens.shape[1]} tokens, {torch.get_num_threads()} threads, {args.repeats} repeat(s)")
    medians = {}
    for name, values in timings.items():
        medians[name] = (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        print(f"  {name:17s} wall {medians[name][0]:8.2f} s   cpu {medians[name][1]:8.2f} s")
    for name in [n for n in timings if n != "transformer_lens"]:
        print(f"  ratio TL / {name}: wall {medians['transformer_lens'][0] / medians[name][0]:.2f}x, "
              f"cpu {medians['transformer_lens'][1] / medians[name][1]:.2f}x"
              + ("  (goal >= 10x)" if name == "workbench" else ""))
    print(f"  max |workbench - TL| = {diff:.2e}  (must be <= 1e-4)")
    if args.full_path:
        full_diff = (res.raw - results["workbench_full"].raw).abs().max().item()
        print(f"  max |workbench - workbench_full| = {full_diff:.2e}")
    print(f"  clean {res.clean_value:.3f}, corrupted {res.corrupt_value:.3f}; cells restoring the most:")
    print(res.top(8).to_string(index=False))


if __name__ == "__main__":
    main()
