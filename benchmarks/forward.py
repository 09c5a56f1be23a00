"""Forward-pass overhead of the workbench against plain Hugging Face.

What it measures, on one batch of random token ids (``--batch`` x ``--seq``, no padding, no
attention mask), all under ``torch.no_grad()``:

- ``workbench``: ``model(tokens)`` on the :class:`~workbench.HookedLlama` from
  :func:`workbench.load_model` with no hooks attached (the TransformerLens bridge);
- ``workbench cache``: ``model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")``;
- ``hf sdpa``: a separate ``LlamaForCausalLM`` with the same config and a copy of the same
  weights, with ``attn_implementation="sdpa"`` (the reference every ratio is taken against);
- ``hf eager``: the same HF model with ``attn_implementation="eager"``, for context.

After one warm-up call of each, the variants are run in turn ``--repeats`` times, interleaved
(the order rotates every round), so background load hits all of them alike. For each variant it
prints the median wall time and the median process CPU time (all threads; on a shared VM whose
CPUs are stolen by neighbours the CPU time is the steadier of the two), each with its ratio to
``hf sdpa``; the minimum over the repeats is printed beside the median, as noise only ever adds
time. Goal: workbench / hf sdpa <= 1.05 (median).

If ``workbench.models.fast_attention`` exists, ``--fast-attention both`` (the default when it
does) also times the workbench with the SDPA-when-unhooked attention path switched on and off in
the same run.

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
    parser.add_argument(
        "--fast-attention", choices=["as-loaded", "on", "off", "both"], default=None,
        help="SDPA-when-unhooked attention for the workbench (needs workbench.models."
        "fast_attention); 'both' times it on and off (default: both if available)",
    )
    args = parser.parse_args(argv)

    import workbench as wb
    from workbench.models.loading import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    model = wb.load_model(args.model, dtype=dtype, device=args.device)
    hf = reference_hf_model(model)

    try:
        from workbench.models import fast_attention
    except ImportError:
        fast_attention = None
    mode = args.fast_attention or ("both" if fast_attention else "as-loaded")
    if mode != "as-loaded" and fast_attention is None:
        parser.error("--fast-attention needs workbench/models/fast_attention.py")

    torch.manual_seed(args.seed)
    vocab = hf.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq), device=args.device)

    def wb_forward():
        return model(tokens)

    def wb_cache():
        return model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")

    def fast(on: bool):
        if on:
            return lambda: fast_attention.enable_sdpa_when_unhooked(model.bridge)
        return lambda: fast_attention.disable_sdpa_when_unhooked(model.bridge)

    def nothing():
        pass

    # name -> (untimed setup, timed call)
    variants: dict[str, tuple] = {}
    if mode == "both":
        for label, fn in (("workbench", wb_forward), ("workbench cache", wb_cache)):
            variants[f"{label} (fast attn off)"] = (fast(False), fn)
            variants[f"{label} (fast attn on)"] = (fast(True), fn)
    else:
        setup = nothing if mode == "as-loaded" else fast(mode == "on")
        suffix = "" if mode == "as-loaded" else f" (fast attn {mode})"
        variants[f"workbench{suffix}"] = (setup, wb_forward)
        variants[f"workbench cache{suffix}"] = (setup, wb_cache)
    variants["hf sdpa"] = (lambda: hf.set_attn_implementation("sdpa"), lambda: hf(tokens).logits)
    variants["hf eager"] = (lambda: hf.set_attn_implementation("eager"), lambda: hf(tokens).logits)

    print(f"model: {model.source.name} ({model.source.path})")
    print(f"device: {args.device}  dtype: {dtype}  torch threads: {torch.get_num_threads()}  "
          f"torch {torch.__version__}")
    print(f"tokens: batch {args.batch} x seq {args.seq}, repeats {args.repeats} (median, "
          f"interleaved, after 1 warm-up each)")

    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        setup, call = variants["hf sdpa"]
        setup()
        reference = call()
        for name in names:  # warm-up, and a correctness check against HF sdpa
            setup, call = variants[name]
            setup()
            out = call()
            logits = out[0] if isinstance(out, tuple) else out
            diff = (logits.float() - reference.float()).abs().max().item()
            print(f"  warm-up {name:34s} max |logits - hf sdpa| = {diff:.2e}")
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                setup, call = variants[name]
                setup()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                call()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)

    for label, table in (("wall", times), ("process CPU", cpu_times)):
        base, base_min = statistics.median(table["hf sdpa"]), min(table["hf sdpa"])
        print(f"\n{label + ' time':34s} {'median ms':>10s} {'/ hf sdpa':>10s} {'min ms':>10s} "
              f"{'/ hf sdpa':>10s}   all runs (ms)")
        for name in names:
            med, low = statistics.median(table[name]), min(table[name])
            runs = " ".join(f"{t * 1e3:.0f}" for t in table[name])
            print(f"{name:34s} {med * 1e3:10.1f} {med / base:10.3f} {low * 1e3:10.1f} "
                  f"{low / base_min:10.3f}   {runs}")

if __name__ == "__main__":
    main()
