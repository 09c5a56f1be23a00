"""``workbench probe``: a per-layer probe sweep for a concept: table, directions, HTML plot.

    workbench probe --concept gender --out runs/probe-gender
    workbench probe --model path/to/llama --concept toxicity --data-dir ../shared/data --out runs/tox
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from workbench.cli.options import add_model_options, load_model_from


def add_parser(sub: Any) -> None:
    """Register ``probe`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("probe", help="probe every layer for a concept (probes/*.yaml)")
    add_model_options(p)
    p.add_argument("--concept", required=True, help="a concept name (see probes/) or a concept file")
    p.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"])
    p.add_argument("--positions", default="last", help="last | mean | a column name")
    p.add_argument("--method", default="logistic", choices=["logistic", "mass_mean", "ridge"])
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="balanced subsample of N examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="benchmark data (default: $WORKBENCH_DATA)")
    p.add_argument("--out", required=True, help="folder for frame.parquet, directions.safetensors, plot.html")
    p.set_defaults(run=cmd_probe)


def cmd_probe(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from workbench.probing import probe_sweep

    model = load_model_from(args, console)
    result = probe_sweep(model, args.concept, hooks=args.hooks, positions=args.positions, method=args.method,
                         cv=args.cv, limit=args.limit, seed=args.seed, data_dir=args.data_dir)
    out = Path(args.out)
    result.save(out)
    result.plot().write_html(out / "plot.html", include_plotlyjs=True)  # inline: opens offline
    console.print(probe_table(result))
    console.print(f"best layer: {result.best_layer()}; wrote {out}/")
    return 0


def probe_table(result) -> Table:
    """Each layer's cross-validated metrics of a :class:`~workbench.probing.ProbeResult`."""
    table = Table(title=f"{result.concept}: {result.method} probe, {result.provenance['cv']}-fold grouped CV")
    metrics = [m for m in ("accuracy", "control_accuracy", "selectivity", "r2") if m in set(result.frame["metric"])]
    for column in ["layer", *metrics]:
        table.add_column(column, justify="right")
    wide = result.frame.pivot(index="hook", columns="metric", values="mean").loc[result.provenance["hooks"]]
    for hook, row in wide.iterrows():
        table.add_row(hook.removesuffix(".hook_resid_post"), *(f"{row[m]:.3f}" for m in metrics))
    return table
