"""The refusal suites' generations against Hugging Face ``generate``, in the same run.

Both sides decode greedily the same benign prompts (XSTest's safe prompts, or JailbreakBench's
benign twins with ``--prompts jbb_benign``) rendered with the model's chat template (plain text
with ``--no-chat``), with the same ``--max-new-tokens``, stopping at EOS:

- ``workbench``: :func:`workbench.evals.generation.greedy_tokens` on the hooked model,
  ``--batch-size`` prompts decoded together (left padding, attention mask, position ids, KV cache,
  through the TransformerLens bridge), which is how the refusal suites generate;
- ``hf generate``: a separate ``LlamaForCausalLM`` with a copy of the same weights
  (``benchmarks/forward.py:reference_hf_model``, HF's default SDPA attention), one prompt at a
  time, ``generate(do_sample=False)``: what a user would run without the workbench.

The two sides alternate batch by batch (ours on a batch of prompts, then HF on the same ones),
so load from other processes on a shared machine falls on both alike. It prints each side's wall time and new tokens per second, the throughput ratio (goal >= 2x),
and the share of prompts whose token ids equal HF's exactly (each prompt's output should be
what it is alone; where they differ it prints the first position that differs, never the
text). Completions are not printed.

    python benchmarks/misuse.py                          # 32 XSTest safe prompts, 64 tokens, batch 16
    python benchmarks/misuse.py --n 16 --max-new-tokens 32 --batch-size 8 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from forward import reference_hf_model  # noqa: E402


def benign_prompts(kind: str, n: int, data_dir=None) -> list[str]:
    """The first ``n`` benign prompts: XSTest's safe prompts or JailbreakBench's benign twins."""
    from workbench.common.data_dir import resolve_data_dir
    from workbench.evals.misuse import load_sources
    from workbench.evals.suites import load_suite

    rows, _, _ = load_sources(load_suite("over_refusal"), resolve_data_dir(data_dir, needed_by="benchmarks/misuse.py"))
    source = {"xstest": "xstest_safe", "jbb_benign": "jbb_benign"}[kind]
    return list(rows.loc[rows["source"] == source, "prompt"].head(n))


def hf_greedy(hf, ids: list[int], max_new_tokens: int, stops: set[int], pad: int) -> list[int]:
    out = hf.generate(torch.tensor([ids], device=hf.device), attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                      device=hf.device), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                      eos_token_id=sorted(stops))[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), len(out))
    return out[:cut]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: embedded model)")
    parser.add_argument("--prompts", default="xstest", choices=["xstest", "jbb_benign"])
    parser.add_argument("--n", type=int, default=32, help="prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-chat", action="store_true", help="plain prompts instead of the chat template")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import workbench as wb
    from workbench.evals.generation import greedy_tokens, stop_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    model = wb.load_model(args.model, device=args.device)
    hf = reference_hf_model(model)
    prompts = benign_prompts(args.prompts, args.n, args.data_dir)
    if args.no_chat:
        ids = [model.to_tokens(p)[0].tolist() for p in prompts]
    else:
        ids = [model.chat_tokens(p)[0].tolist() for p in prompts]
    stops, pad = stop_ids(model), int(model.tokenizer.pad_token_id or model.tokenizer.eos_token_id)
    print(f"model {model.source.name}, {len(ids)} {args.prompts} prompts ({'plain' if args.no_chat else 'chat template'}, "
          f"{min(map(len, ids))}-{max(map(len, ids))} tokens), max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, device {args.device}")

    ours: list[list[int]] = []
    theirs: list[list[int]] = []
    t_ours = t_hf = 0.0
    with torch.no_grad():
        greedy_tokens(model, ids[:2], 2, batch_size=2)  # warm-up, both sides
        hf_greedy(hf, ids[0], 2, stops, pad)
        # Interleaved by rounds of one batch (ours, then HF on the same prompts), so load from
        # other processes on a shared machine falls on both sides alike.
        for start in range(0, len(ids), args.batch_size):
            chunk = ids[start: start + args.batch_size]
            t0 = time.perf_counter()
            ours += greedy_tokens(model, chunk, args.max_new_tokens, batch_size=args.batch_size)
            t_ours += time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs += [hf_greedy(hf, p, args.max_new_tokens, stops, pad) for p in chunk]
            t_hf += time.perf_counter() - t0

    n_ours, n_hf = sum(map(len, ours)), sum(map(len, theirs))
    print(f"{'':16}{'wall s':>10}{'new tokens':>12}{'tokens/s':>10}")
    print(f"{'workbench':16}{t_ours:10.1f}{n_ours:12d}{n_ours / t_ours:10.1f}")
    print(f"{'hf generate':16}{t_hf:10.1f}{n_hf:12d}{n_hf / t_hf:10.1f}")
    ratio = (n_ours / t_ours) / (n_hf / t_hf)
    print(f"throughput ratio workbench / hf: {ratio:.2f}x (goal >= 2x): {'met' if ratio >= 2 else 'NOT met'}")
    same = [a == b for a, b in zip(ours, theirs, strict=True)]
    print(f"outputs equal to HF's token for token: {sum(same)}/{len(same)} ({sum(same) / len(same):.0%})")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            first = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            print(f"  prompt {i}: first differing position {first} of {max(len(a), len(b))}")


if __name__ == "__main__":
    main()
