"""Speed of the refusal-direction search: batched candidates against a one-forward-per-candidate loop.

Both run :func:`workbench.patching.refusal_direction` on the same prompts and candidates
(Arditi et al.'s splits, sampled as their pipeline does) and must give the same table:

- ``loop`` (``batched=False``): for each candidate, one forward over the harmful validation
  prompts and one over the harmless ones under ``model.ablate`` (resid_pre, attn_out, mlp_out,
  every layer), one over the harmless ones under ``model.steer`` (the mean difference at its
  layer), whole left-padded prompts, full logits: the authors' pipeline, through the workbench's
  own interventions;
- ``batched`` (the default): rows (a prompt under one candidate) ``--batch-size`` a pass, each
  row's hook using its own candidate's vector; harmful and harmless prompts share the ablation
  passes; the chat template's shared opening (SmolLM2's default system prompt and
  ``<|im_start|>user``) runs once per candidate in a pass and its keys/values are copied into
  every row's cache; the unembedding runs on each row's last token only.

It prints each one's wall time, the ratio loop / batched, the largest difference between the two
tables (must be <= 1e-4; float rounding of the batched rows), and whether both select the same
candidate. The wall times include the shared part (the train prompts' activations and the
validation baselines, identical work); the candidate scoring alone is timed too
(``info["seconds"]``). ``--repeats`` interleaves the two (loop, batched, batched, loop, ...);
the ratio of the medians is the figure.

    python benchmarks/refusal_direction.py                         # embedded SmolLM2-135M, a subset
    python benchmarks/refusal_direction.py --layers 1 5 9 13 17 21 --n-val 8
    python benchmarks/refusal_direction.py --threads 1             # a shared, oversubscribed CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: embedded model)")
    parser.add_argument("--data-dir", default=None, help="default: $WORKBENCH_DATA")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--layers", type=int, nargs="*", default=[4, 8, 12, 16, 20])
    parser.add_argument("--positions", type=int, nargs="*", default=None, help="default: every post-instruction token")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import workbench as wb
    from workbench.patching import refusal_direction

    model = wb.load_model(args.model)
    settings = dict(n_train=args.n_train, n_val=args.n_val, layers=args.layers, positions=args.positions,
                    batch_size=args.batch_size, data_dir=args.data_dir, progress=False)

    def run(batched: bool):
        start = time.perf_counter()
        rd = refusal_direction(model, batched=batched, **settings)
        return rd, time.perf_counter() - start

    times = {"loop": [], "batched": []}
    results = {}
    for r in range(args.repeats):
        for name in (("loop", "batched") if r % 2 == 0 else ("batched", "loop")):
            results[name], elapsed = run(name == "batched")
            times[name].append(elapsed)

    loop, fast = results["loop"].frame, results["batched"].frame
    columns = ["ablation_score", "induce_score", "kl"]
    diff = np.nanmax(np.abs(loop[columns].to_numpy() - fast[columns].to_numpy()))
    medians = {name: statistics.median(values) for name, values in times.items()}
    scored = int(fast["norm"].gt(0).sum())
    print(f"model: {model.source.name}; {scored} candidates scored ({len(fast)} in the table); "
          f"val prompts: {len(results['batched'].prompts['harmful_val'])} harmful + "
          f"{len(results['batched'].prompts['harmless_val'])} harmless; batch size {args.batch_size}; "
          f"torch threads {torch.get_num_threads()}")
    for name, values in times.items():
        print(f"{name:8s} wall {medians[name]:8.2f} s   (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"ratio loop / batched: {medians['loop'] / medians['batched']:.2f}x")
    scoring = {name: results[name].info["seconds"]["scoring"] for name in results}
    print(f"candidate scoring only (last run each): loop {scoring['loop']:.2f} s, batched {scoring['batched']:.2f} s, "
          f"ratio {scoring['loop'] / scoring['batched']:.2f}x")
    print(f"largest difference between the tables: {diff:.2e} ({'ok' if diff <= 1e-4 else 'TOO LARGE'})")
    same = (results["loop"].layer, results["loop"].position) == (results["batched"].layer, results["batched"].position)
    print(f"selected: loop layer {results['loop'].layer} position {results['loop'].position}; batched layer "
          f"{results['batched'].layer} position {results['batched'].position} ({'same' if same else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
