"""``workbench data pull [NAME ...]``: download the published benchmark files, checked by sha256.

    workbench data pull                          every dataset, into $WORKBENCH_DATA (else the per-user folder)
    workbench data pull bbq --only crows_pairs --dest /data/benchmarks

The downloading is :func:`workbench.evals.data_pull.pull`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table


def add_parser(sub: Any) -> None:
    """Register ``data`` (and its ``pull``) on the ``workbench`` command's subparsers."""
    p = sub.add_parser("data", help="benchmark data: `workbench data pull`")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("pull", help="download the published benchmark files, checked by sha256")
    p.add_argument("names", nargs="*", help="datasets (default: all)")
    p.add_argument("--only", action="append", help="a dataset to fetch (repeatable)")
    p.add_argument("--dest", default=None, help="data directory (default: $WORKBENCH_DATA, else the user data dir)")
    p.add_argument("--base-url", default="https://raw.githubusercontent.com", help="mirror of raw GitHub")
    p.set_defaults(run=cmd_data_pull)


def cmd_data_pull(args: argparse.Namespace, console: Console) -> int:
    """``workbench data pull [NAME ...] [--only NAME] [--dest D] [--base-url URL]``: one row per dataset."""
    from workbench.common.data_dir import resolve_data_dir
    from workbench.evals.data_pull import pull

    names = list(args.names or []) + list(args.only or [])
    report = pull(args.dest, names or None, base_url=args.base_url, progress=True)
    table = Table(title=f"data pull into {resolve_data_dir(args.dest)}")
    for column in ("dataset", "files", "present", "downloaded", "replaced", "MB"):
        table.add_column(column, justify="right" if column != "dataset" else "left")
    for name, part in report.groupby("dataset", sort=False):
        counts = part["status"].value_counts()
        table.add_row(name, str(len(part)), *(str(int(counts.get(s, 0))) for s in ("present", "downloaded", "replaced")),
                      f"{part['bytes'].sum() / 1e6:.1f}")
    console.print(table)
    return 0
