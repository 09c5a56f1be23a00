"""Forward-pass overhead of the workbench against plain Hugging Face.

What it measures, on one batch of random token ids (``--batch`` x ``--seq``, no padding, no
attention mask), all under ``torch.no_grad()``:

- ``workbench``: ``model(tokens)`` on the :class:`~workbench.HookedLlama` from
  :func:`workbench.load_model` with no hooks attached (the TransformerLens bridge), with the
  default attention (fused SDPA in every layer nobody watches, ``workbench.models.fast_attention``)
  and with the eager path (``model.eager_attention()``, TransformerLens's own attention);
- ``workbench cache``: ``model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")``,
  default and eager;
- ``hf sdpa``: a separate ``LlamaForCausalLM`` with the same config and a copy of the same
  weights, with ``attn_implementation="sdpa"`` (HF's default, the reference every ratio is taken
  against);
- ``hf eager``: the same HF model with ``attn_implementation="eager"`` (second ratio column).

After one warm-up call of each (which also prints each variant's distance to its HF reference),
the variants are run in turn ``--repeats`` times, interleaved (the order rotates every round), so
background load hits all of them alike. For each variant it prints the median wall time and the
median process CPU time (all threads; on a shared VM whose CPUs are stolen by neighbours the CPU
time is the steadier of the two), each with its ratio to ``hf sdpa`` and ``hf eager``; the
minimum over the repeats is printed beside the median, as noise only ever adds time. Goals
(median wall time): default forward / hf sdpa <= 1.02, default cache / hf sdpa <= 1.05.

    python benchmarks/forward.py                          # the embedded SmolLM2-135M
    python benchmarks/forward.py --model /tmp/smol_cache --batch 8 --seq 512 --repeats 5
    python benchmarks/forward.py --threads 1 --repeats 7   # steadier on a crowded machine
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def reference_hf_model(model) -> torch.nn.Module:
    """A separate ``LlamaForCausalLM`` holding a copy of ``model``'s weights.

    The bridge wraps the HF modules of ``model.hf_model`` in place, so the reference is a fresh
    HF model with the same config, loaded (strictly) from the wrapped model's tensors.
    """
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(model.hf_model.config)
    reference = LlamaForCausalLM(config)
    wrapped = dict(model.hf_model.named_parameters(remove_duplicate=False))
    wrapped.update(model.hf_model.named_buffers(remove_duplicate=False))
    tensors = {name.replace("._original_component", ""): t for name, t in wrapped.items()}
    wanted = reference.state_dict().keys()
    reference.load_state_dict({k: tensors[k].detach().clone() for k in wanted}, strict=True)
    return reference.to(model.device).eval()


GOALS = {"workbench (default)": 1.02, "workbench cache (default)": 1.05}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: embedded model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.seq < 1:
        parser.error("--repeats, --batch and --seq must be at least 1")

    import workbench as wb
    from workbench.models.loading import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    model = wb.load_model(args.model, dtype=dtype, device=args.device)
    hf = reference_hf_model(model)

    torch.manual_seed(args.seed)
    vocab = hf.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq), device=args.device)

    def wb_forward():
        return model(tokens)

    def wb_cache():
        return model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")

    def attention(fast: bool):
        def setup():
            model.fast_attention = fast
        return setup

    def implementation(name: str):
        return lambda: hf.set_attn_implementation(name)

    # name -> (untimed setup, timed call, the HF variant its logits are checked against)
    variants: dict[str, tuple] = {}
    for label, fn in (("workbench", wb_forward), ("workbench cache", wb_cache)):
        variants[f"{label} (default)"] = (attention(True), fn, "hf sdpa")
        variants[f"{label} (eager)"] = (attention(False), fn, "hf eager")
    variants["hf sdpa"] = (implementation("sdpa"), lambda: hf(tokens).logits, "hf sdpa")
    variants["hf eager"] = (implementation("eager"), lambda: hf(tokens).logits, "hf eager")

    print(f"model: {model.source.name} ({model.source.path})")
    print(f"device: {args.device}  dtype: {dtype}  torch threads: {torch.get_num_threads()}  "
          f"torch {torch.__version__}")
    print(f"tokens: batch {args.batch} x seq {args.seq}, repeats {args.repeats} (median, "
          f"interleaved, after 1 warm-up each)")

    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        references = {}
        for ref in ("hf sdpa", "hf eager"):
            setup, call, _ = variants[ref]
            setup()
            references[ref] = call().float()
        for name in names:  # warm-up, and a correctness check against the matching HF variant
            setup, call, ref = variants[name]
            setup()
            out = call()
            logits = out[0] if isinstance(out, tuple) else out
            diff = (logits.float() - references[ref]).abs().max().item()
            print(f"  warm-up {name:28s} max |logits - {ref}| = {diff:.2e}")
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                setup, call, _ = variants[name]
                setup()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                call()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    model.fast_attention = True  # leave the model as loaded

    for label, table in (("wall", times), ("process CPU", cpu_times)):
        sdpa, eager = statistics.median(table["hf sdpa"]), statistics.median(table["hf eager"])
        sdpa_min = min(table["hf sdpa"])
        print(f"\n{label + ' time':28s} {'median ms':>10s} {'/ hf sdpa':>10s} {'/ hf eager':>10s} "
              f"{'min ms':>10s} {'/ hf sdpa':>10s}   all runs (ms)")
        for name in names:
            med, low = statistics.median(table[name]), min(table[name])
            runs = " ".join(f"{t * 1e3:.0f}" for t in table[name])
            print(f"{name:28s} {med * 1e3:10.1f} {med / sdpa:10.3f} {med / eager:10.3f} "
                  f"{low * 1e3:10.1f} {low / sdpa_min:10.3f}   {runs}")
    sdpa = statistics.median(times["hf sdpa"])
    print()
    for name, goal in GOALS.items():
        ratio = statistics.median(times[name]) / sdpa
        verdict = "met" if ratio <= goal else "NOT met"
        print(f"goal {name} / hf sdpa <= {goal:.2f} (median wall): {ratio:.3f}, {verdict}")


if __name__ == "__main__":
    main()
