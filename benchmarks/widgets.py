"""How responsive the widgets stay on a long prompt, against costs measured in the same run.

On a prompt of ``--tokens`` tokens (2,048 by default) it times, as medians of ``--repeats``:

- ``forward``: one plain ``model(tokens)`` (the baseline: a redraw that reruns the model cannot
  be cheaper than this, so a ratio near 1 means the widget adds little on top);
- the attention viewer: building it, a layer change (early, middle and last layer: the forward
  pass stops after the layer shown), a head change and a window change (no model work);
- the logit lens viewer: building it and a window change (decodes one page of positions);

and it compares the bytes of the figures the widgets send to the browser with one unpooled
``tokens x tokens`` attention heatmap of the same prompt (what a naive view would send).

    python benchmarks/widgets.py                      # embedded SmolLM2-135M, 2,048 tokens
    python benchmarks/widgets.py --tokens 512 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import plotly.graph_objects as go
import torch

import workbench as wb

TEXT = ("The Eiffel Tower was finished in 1889 for the World's Fair. At first many Parisians disliked it, "
        "but today it is the most visited paid monument in the world. ")


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="folder, .gguf file or hub id (default: embedded)")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wb.load_model(args.model) if args.model else wb.load_model()
    ids = model.to_tokens(TEXT * (args.tokens // 20 + 1))[:, : args.tokens]
    prompt = model.to_string(ids[0, 1:])  # the viewers take text; BOS is prepended again
    n = model.to_tokens(prompt).shape[1]
    last = model.cfg.n_layers - 1

    with torch.no_grad():
        model(ids)  # warm-up
        forward = timed(lambda: model(ids), args.repeats)

    rows = [("forward (baseline)", forward)]
    start = time.perf_counter()
    viewer = wb.viz.AttentionViewer(model, prompt, layer=0)
    rows.append(("attention viewer: build", time.perf_counter() - start))
    layer_steps = {"attention: layer change -> 0": 0, f"attention: layer change -> {last // 2}": last // 2,
                   f"attention: layer change -> {last}": last}
    for label, layer in layer_steps.items():
        times = []
        for _ in range(args.repeats):
            viewer.layer.value = 1 if layer == 0 else 0  # untimed: move away first
            viewer._patterns.clear()  # as after a new prompt: the layer is computed, not cached
            start = time.perf_counter()
            viewer.layer.value = layer
            times.append(time.perf_counter() - start)
        rows.append((label, statistics.median(times)))
    rows.append(("attention: head change", timed(lambda: setattr(viewer.head, "value", (viewer.head.value + 1) % model.cfg.n_heads), args.repeats)))
    rows.append(("attention: window change", timed(lambda: setattr(viewer.window, "value", (viewer.window.value + 1) % (viewer.window.max + 1)), args.repeats)))
    start = time.perf_counter()
    lens = wb.viz.LogitLensViewer(model, prompt, target=" Paris")
    rows.append(("logit lens viewer: build", time.perf_counter() - start))
    rows.append(("logit lens: window change", timed(lambda: setattr(lens.window, "value", (lens.window.value + 1) % (lens.window.max + 1)), args.repeats)))

    print(f"{n} tokens, {model.cfg.n_layers} layers, {args.threads} threads, median of {args.repeats}")
    print(f"{'step':38s} {'seconds':>8s} {'x forward':>10s}")
    for label, seconds in rows:
        print(f"{label:38s} {seconds:8.3f} {seconds / forward:10.2f}")

    pattern = viewer._layer_patterns(viewer.layer.value)[0]
    start = time.perf_counter()
    naive = go.Figure(go.Heatmap(z=pattern, x=list(range(n)), y=list(range(n))))
    naive_bytes = len(naive.to_json())
    naive_seconds = time.perf_counter() - start
    sent = {"attention heatmap + head grid": len(viewer.heatmap.to_json()) + len(viewer.grid.to_json()),
            "logit lens + target curve": len(lens.lens_figure.to_json()) + len(lens.target_figure.to_json())}
    print(f"\nunpooled {n}x{n} heatmap (baseline): {naive_bytes / 1e6:.1f} MB, built and serialised in {naive_seconds:.2f} s")
    for label, size in sent.items():
        print(f"{label:38s} {size / 1e6:8.3f} MB {size / naive_bytes:10.4f} x baseline")
    assert np.isfinite(pattern).all()


if __name__ == "__main__":
    main()
