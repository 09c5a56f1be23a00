"""The main job (``make demo`` / ``workbench demo``): what the workbench does, end to end.

Describe the model, answer a question, run one cached forward pass and show the residual-stream
norm at each layer; with ``--suite`` (what ``make demo`` runs) also the quick safety suite, its
HTML report and the ``04`` notebook headless (:func:`run_suite_demo`).

    workbench demo --model path/to/llama --max-new-tokens 20
    workbench demo --suite --suite-out runs/quick-suite
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from workbench.cli.eval import print_skipped, summary_table
from workbench.cli.models import print_info
from workbench.cli.options import add_model_options, load_model_from

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama


def add_parser(sub: Any) -> None:
    """Register ``demo`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("demo", help="the main job on a model (default: the embedded one)")
    add_model_options(p)
    p.add_argument("--prompt", default="Q: What is the capital of France?\nA:")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--suite", action="store_true",
                   help="also run the quick safety suite, write its HTML report and run notebook 04 headless")
    p.add_argument("--suite-out", default="runs/quick-suite", help="folder for the suite results and the report")
    p.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    model = load_model_from(args, console)
    run_demo(model, prompt=args.prompt, max_new_tokens=args.max_new_tokens, console=console)
    if args.suite:
        run_suite_demo(model, args.suite_out, console=console)
    return 0


def residual_norms(model: HookedLlama, text: str) -> pd.DataFrame:
    """Mean L2 norm of the residual stream leaving each layer, over the prompt's positions.

    >>> residual_norms(model, "The capital of France is").head(2)      # doctest: +SKIP
       layer  hook                       mean_norm  last_token_norm
    0      0  blocks.0.hook_resid_post   ...
    """
    import torch

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
    """The model half of the main job, printed on ``console``: info, a greedy answer, residual norms."""
    console = console or Console()
    print_info(model.info(), console)
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


def notebook_path(name: str = "04_safety_eval_suite.ipynb") -> Path | None:
    """A study notebook of a source checkout (``notebooks/`` beside the package), or None (installed wheel)."""
    path = Path(__file__).resolve().parents[2] / "notebooks" / name  # workbench/cli/demo.py -> the checkout
    return path if path.is_file() else None


def run_suite_demo(model: HookedLlama, out: str | os.PathLike = "runs/quick-suite", *, limit: int | None = None,
                   notebook: bool = True, console: Console | None = None) -> Path:
    """The safety half of the main job: the quick suite, its HTML report, and the ``04`` notebook headless.

    The suite runs here first (with progress bars) and is saved to ``out``; the notebook then runs
    in a fresh kernel on the same folder, so it reuses the finished suites instead of scoring them
    again, and is saved, executed, beside the report.

    Returns:
        The report's path (``out/report.html``).

    >>> run_suite_demo(model, "runs/quick-suite")                # doctest: +SKIP
    PosixPath('runs/quick-suite/report.html')
    """
    from workbench.evals import run_suite
    from workbench.viz.report import write_report

    console = console or Console()
    out = Path(out).resolve()
    console.print(f"\n[bold]quick safety suite[/] -> {out}", highlight=False)
    suite = run_suite(model, "quick", limit=limit, out=out, progress=True)
    console.print(summary_table(suite))
    print_skipped(suite.skipped, console)
    report = write_report(out, out / "report.html")
    source = notebook_path() if notebook else None
    if source is not None:
        executed = _execute_notebook(source, out, limit, console)
        console.print(f"[bold]notebook:[/] {executed}", highlight=False)
    console.print(f"[bold]report:[/] {report}", highlight=False)
    return report


def _execute_notebook(source: Path, out: Path, limit: int | None, console: Console) -> Path:
    import nbformat
    from nbclient import NotebookClient

    console.print(f"running {source.name} headless…", highlight=False)
    nb = nbformat.read(source, as_version=4)
    # The notebook reads these: the same output folder (finished suites are reused) and size cap.
    env = {"WORKBENCH_SUITE_OUT": str(out)}
    if limit is not None:
        env["WORKBENCH_NOTEBOOK_LIMIT"] = str(limit)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        executed = out / source.name
        nbformat.write(nb, executed)  # also when a cell failed: the error is in the saved notebook
    return executed
