"""The main job (``make demo`` / ``workbench demo``): what the workbench does, end to end.

For now: describe the model, answer a question, run one cached forward pass and show the
residual-stream norm at each layer. Later stages (eval suites, report) extend it.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from workbench.models.hooked import HookedLlama


def residual_norms(model: HookedLlama, text: str) -> pd.DataFrame:
    """Mean L2 norm of the residual stream leaving each layer, over the prompt's positions.

    >>> residual_norms(model, "The capital of France is").head(2)      # doctest: +SKIP
       layer  hook                       mean_norm  last_token_norm
    0      0  blocks.0.hook_resid_post   ...
    """
    with torch.no_grad():
        _, cache = model.run_with_cache(text, names_filter="blocks.*.hook_resid_post")
    rows = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        norms = cache[name][0].float().norm(dim=-1)  # [pos]
        rows.append({"layer": layer, "hook": name, "mean_norm": norms.mean().item(),
                     "last_token_norm": norms[-1].item()})
    return pd.DataFrame(rows)


def run_demo(model: HookedLlama, *, prompt: str, max_new_tokens: int = 20, console: Console | None = None) -> None:
    console = console or Console()
    from workbench.cli import print_info

    print_info(model.info())
    start = time.perf_counter()
    answer = model.generate(prompt, max_new_tokens=max_new_tokens, include_prompt=False)
    console.print(f"\n[bold]prompt:[/] {prompt!r}\n[bold]answer:[/] {answer!r}  "
                  f"({time.perf_counter() - start:.1f} s, greedy)", highlight=False)
    text = "The capital of France is"
    frame = residual_norms(model, text)
    table = Table(title=f"residual stream norms for {text!r} ({len(model.to_str_tokens(text))} tokens)")
    for column in ("layer", "mean norm", "last-token norm"):
        table.add_column(column, justify="right")
    shown = sorted({0, 1, 2, *range(0, len(frame), 5), len(frame) - 2, len(frame) - 1})
    for row in frame.iloc[shown].itertuples():
        table.add_row(str(row.layer), f"{row.mean_norm:.2f}", f"{row.last_token_norm:.2f}")
    console.print(table)
