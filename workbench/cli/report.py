"""``workbench report RUN -o FILE``: a self-contained HTML report of a saved eval run (opens offline)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console


def add_parser(sub: Any) -> None:
    """Register ``report`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("report", help="self-contained HTML report of a saved eval run")
    p.add_argument("run_dir", help="a saved eval folder (EvalResult or suite group)")
    p.add_argument("-o", "--out", default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--top", type=int, default=10, help="examples listed per suite")
    p.add_argument("--compare", default=None, metavar="RUN_B",
                   help="a second saved run of the same suites and examples: adds the paired comparison "
                        "(B - A, paired bootstrap CI, McNemar / permutation test, Benjamini-Hochberg)")
    p.add_argument("--labels", nargs=2, default=("run A", "run B"), metavar=("A", "B"),
                   help="names of the two runs in the comparison")
    p.set_defaults(run=cmd_report)


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from workbench.viz.report import write_report

    out = write_report(args.run_dir, args.out or Path(args.run_dir) / "report.html", top=args.top,
                       compare=args.compare, labels=tuple(args.labels))
    console.print(f"wrote {out}")
    return 0
