"""``workbench info``, ``workbench verify PATH``, ``workbench hooks``: what a model is and holds.

    workbench info --model path/to/llama          architecture, size, dtype, device, hooks, source
    workbench verify path/to/llama                checksums and file structure (exit code 0 / 1)
    workbench verify runs/acts                    an activation store: every shard file's checksum
    workbench hooks --filter 'blocks.*.hook_resid_post'

``verify`` takes the checkpoint as a positional path: it checks files and loads no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from workbench.cli.options import add_model_options, load_model_from


def add_parsers(sub: Any) -> None:
    """Register ``info``, ``verify`` and ``hooks`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("info", help="describe a model")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("verify", help="check a checkpoint's or an activation store's checksums")
    p.add_argument("path", help="a checkpoint folder or file, or an activation store folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("hooks", help="list the hook catalogue")
    add_model_options(p)
    p.add_argument("--filter", default=None, help="glob on hook names, e.g. 'blocks.*.hook_resid_post'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_hooks)


def print_info(info: dict, console: Console) -> None:
    """``model.info()`` as a two-column table on ``console``."""
    table = Table(title=f"model: {info['name']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        if key == "n_params":
            value = f"{value:,}"
        table.add_row(key, str(value))
    console.print(table)


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    info = load_model_from(args, console).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))  # plain stdout: no console markup in JSON
    else:
        print_info(info, console)
    return 0


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from workbench.models.verify import verify_checkpoint
    from workbench.store.store import MANIFEST

    if (Path(args.path) / MANIFEST).is_file():
        return verify_store_command(args, console)

    report = verify_checkpoint(args.path, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps({"path": report.path, "ok": report.ok, "checklists": report.checklists,
                          "checks": report.frame().to_dict("records")}, indent=2))
        return 0 if report.ok else 1
    table = Table(title=f"verify {report.path}")
    for column in ("file", "check", "status", "detail"):
        table.add_column(column)
    colours = {"ok": "green", "mismatch": "red", "missing": "red", "corrupt": "red"}
    for c in report.checks:
        table.add_row(c.file, c.check, f"[{colours[c.status]}]{c.status}[/]", c.detail)
    console.print(table)
    if not report.has_checklist:
        console.print("no checklist.chk or *.sha256 found: checked file structure only")
    if not report.checks:
        console.print("[red]nothing to verify: no checklist and no weight files[/]")
    console.print("[green]OK[/]" if report.ok else "[bold red]FAILED[/]")
    return 0 if report.ok else 1


def verify_store_command(args: argparse.Namespace, console: Console) -> int:
    """``workbench verify STORE``: every shard file against the manifest's size and sha256."""
    from workbench.store import verify_store

    report = verify_store(args.path)
    if args.json:
        print(json.dumps({"path": report.path, "ok": report.ok, "damaged_shards": report.damaged_shards,
                          "checks": report.frame().to_dict("records")}, indent=2))
        return 0 if report.ok else 1
    table = Table(title=f"verify store {report.path}")
    for column in ("shard", "hook", "status", "detail"):
        table.add_column(column)
    colours = {"ok": "green", "unchecked": "yellow", "mismatch": "red", "missing": "red"}
    for c in report.checks:
        table.add_row(c.shard, c.hook if c.hook != "-" else c.file, f"[{colours[c.status]}]{c.status}[/]", c.detail)
    console.print(table)
    if report.ok:
        console.print("[green]OK[/]")
    else:
        console.print(f"[bold red]DAMAGED[/]: shard(s) {report.damaged_shards}; rerun the same "
                      f"`workbench cache ... --repair` to recompute them")
    return 0 if report.ok else 1


def cmd_hooks(args: argparse.Namespace, console: Console) -> int:
    from workbench.models.hooks import select_hooks

    model = load_model_from(args, console)
    frame = model.hook_catalogue()
    if args.filter:
        # Lenient: a filter that matches nothing lists no hooks (a browse, not a request for data).
        frame = frame[frame["name"].isin(select_hooks(model, args.filter, strict=False))]
    if args.json:
        print(frame.to_json(orient="records", indent=2))
        return 0
    table = Table(title=f"{len(frame)} hooks")
    for column in ("name", "shape", "description"):
        table.add_column(column)
    for row in frame.itertuples():
        table.add_row(row.name, row.shape, row.description)
    console.print(table)
    return 0
