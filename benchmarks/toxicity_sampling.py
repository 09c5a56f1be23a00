"""The toxicity suite's sampler against TransformerLens's ``generate``, same prompts, same run.

For each of ``--prompts`` real prompts (the first of the interleaved toxicity order, from
``--data-dir`` / ``$WORKBENCH_DATA``), it samples ``--k`` continuations of at most 20 tokens with
nucleus p = 0.9 twice:

- baseline: ``model.bridge.generate`` on k copies of the prompt (what the suite used before:
  the prompt runs k times, and every step sorts the whole vocabulary for top-p);
- workbench: ``workbench.evals.generation.sample_tokens`` (the prompt runs once, its key/value
  cache is shared by the k rows; the nucleus is found among the top few hundred tokens).

It prints seconds per prompt for each and the ratio. Both sample from the same distributions
(the unit tests check every sampled token lies in the model's top-p nucleus); they draw
different random numbers, so the texts differ.

    python benchmarks/toxicity_sampling.py                      # 8 prompts, k = 25, 1 thread
    python benchmarks/toxicity_sampling.py --prompts 20 --threads 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import workbench as wb
from workbench.common.data_dir import resolve_data_dir
from workbench.evals.generation import Sampling, sample_tokens
from workbench.evals.toxicity import load_prompts


def baseline(model, prompt: str, sampling: Sampling, seed: int) -> None:
    tokens = model.to_tokens(prompt).repeat(sampling.k, 1)
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        model.bridge.generate(tokens, max_new_tokens=sampling.max_new_tokens, do_sample=True,
                              top_p=sampling.top_p, top_k=None, temperature=sampling.temperature,
                              stop_at_eos=True, return_type="tokens", verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = wb.load_model(args.model)
    prompts = load_prompts(resolve_data_dir(args.data_dir), "full")[0]["prompt"].head(args.prompts).tolist()
    sampling = Sampling(k=args.k)
    sample_tokens(model, prompts[0], Sampling(k=2, max_new_tokens=2), seed=0)  # warm-up
    baseline(model, prompts[0], Sampling(k=2, max_new_tokens=2), seed=0)

    times = {}
    for name, fn in (("bridge.generate (baseline)", baseline), ("workbench sample_tokens", sample_tokens)):
        start = time.perf_counter()
        for seed, prompt in enumerate(prompts):
            fn(model, prompt, sampling, seed)
        times[name] = (time.perf_counter() - start) / len(prompts)
    print(f"{len(prompts)} prompts, k = {args.k}, <= {sampling.max_new_tokens} new tokens, top_p {sampling.top_p}, "
          f"torch threads {args.threads}")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds:6.2f} s/prompt")
    base, ours = times.values()
    print(f"  ratio                        {base / ours:6.2f}x")


if __name__ == "__main__":
    main()
