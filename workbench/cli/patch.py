"""``workbench patch``: an activation-patching sweep from the command line.

    workbench patch --clean "When Mary and John went to the store, John gave a drink to" \\
                    --corrupt "When Mary and John went to the store, Mary gave a drink to" \\
                    --answer " Mary" --wrong " John" --site resid_pre --out runs/ioi

writes ``table.csv`` (one row per cell), ``values.pt``, ``result.json`` and ``heatmap.html``
(plotly inlined, opens offline) to ``--out``, and prints the cells with the largest effect.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.cli.options import add_model_options, load_model_from
from workbench.models.sites import SITES


def add_parser(sub: Any) -> None:
    """Register ``patch`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("patch", help="activation-patching sweep: table + HTML heatmap")
    add_model_options(p)
    p.add_argument("--clean", required=True, action="append", help="clean prompt (repeat for a batch)")
    p.add_argument("--corrupt", required=True, action="append", help="corrupted prompt, paired by order")
    p.add_argument("--metric", default="logit_diff", choices=["logit_diff", "prob", "kl"],
                   help="logit_diff (needs --answer and --wrong), prob (needs --answer) or kl (to the clean run)")
    p.add_argument("--answer", default=None, help="the clean run's answer token, e.g. ' Mary'")
    p.add_argument("--wrong", default=None, help="the corrupted run's answer token, e.g. ' John'")
    p.add_argument("--site", default="resid_pre", choices=list(SITES))
    p.add_argument("--mode", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--layers", type=int, nargs="*", default=None)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=cmd_patch)


def cmd_patch(args: argparse.Namespace, console: Console) -> int:
    from workbench.patching import kl_to_clean, logit_diff, patch_sweep, token_prob

    # Argument errors first: they need no model.
    if len(args.clean) != len(args.corrupt):
        raise ValueError(f"--clean given {len(args.clean)} times but --corrupt {len(args.corrupt)} times")
    if args.metric in ("logit_diff", "prob") and args.answer is None:
        raise ValueError(f"--metric {args.metric} needs --answer")
    if args.metric == "logit_diff" and args.wrong is None:
        raise ValueError("--metric logit_diff needs --wrong")
    model = load_model_from(args, console)
    if args.metric == "logit_diff":
        metric = logit_diff(model, args.answer, args.wrong)
    elif args.metric == "prob":
        metric = token_prob(model, args.answer)
    else:
        metric = kl_to_clean(model, args.clean)
    res = patch_sweep(model, args.clean, args.corrupt, metric, site=args.site, mode=args.mode, layers=args.layers)
    out = res.save(args.out)
    res.plot().write_html(Path(out) / "heatmap.html", include_plotlyjs=True, full_html=True)
    console.print(f"{res.metric_name}: clean {res.clean_value:.4f}, corrupted {res.corrupt_value:.4f}")
    console.print(res.top(10).to_string(index=False), highlight=False, markup=False)
    console.print(f"wrote {out}/table.csv, values.pt, result.json, heatmap.html")
    return 0
