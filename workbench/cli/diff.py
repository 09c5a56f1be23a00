"""``workbench diff A B``: are two checkpoints, in any formats, the same weights?

    workbench diff llama/7B llama-7b-hf                  Meta shards vs a Hugging Face folder
    workbench diff llama-7b-hf llama-7b.Q8_0.gguf        equal within Q8_0 quantization?
    workbench diff A B --atol 1e-3 --json diff.json      also save every tensor's verdict

Exit code 0: the same model (bitwise, within a named quantization or tolerance, same tokenizer);
1: different; 2: an error (a missing path, an unreadable or truncated file: the message names it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_path

_COLOURS = {"identical": "green", "equal_within_quantization": "cyan", "equal_within_tolerance": "cyan"}
_SHOWN = 25  # tensors listed individually


def add_parser(sub: Any) -> None:
    """Register ``diff`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("diff", help="compare two checkpoints tensor by tensor (exit 0 same, 1 different, 2 error)")
    p.add_argument("a", help="a checkpoint: Meta folder, Hugging Face folder or .gguf file")
    p.add_argument("b", help="the other checkpoint")
    p.add_argument("--atol", type=float, default=None, help="also accept tensors whose max abs error is at most this")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full result as JSON to OUT")
    p.set_defaults(run=cmd_diff)


def cmd_diff(args: argparse.Namespace, console: Console) -> int:
    from workbench.models.diff import diff_checkpoints

    try:
        result = diff_checkpoints(args.a, args.b, atol=args.atol, progress=sys.stderr.isatty())
    except (WorkbenchError, OSError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    frame = result.frame
    counts = Table(title=f"diff {result.a} ({result.format_a}) vs {result.b} ({result.format_b})")
    counts.add_column("verdict")
    counts.add_column("tensors", justify="right")
    counts.add_column("example")
    for verdict, group in frame.groupby("verdict", sort=False):
        first = group.iloc[0]
        example = f"{first['name']}" + (f": {first['detail']}" if first["detail"] else "")
        counts.add_row(f"[{_COLOURS.get(verdict, 'red')}]{verdict}[/]", str(len(group)), example)
    console.print(counts)
    notable = result.different  # identical and equal-within tensors are summed up in the counts
    if notable:
        title = f"{len(notable)} tensors differ" + (f" (first {_SHOWN})" if len(notable) > _SHOWN else "")
        table = Table(title=title)
        table.add_column("tensor", no_wrap=True)
        for column in ("verdict", "dtypes", "max abs", "changed", "detail"):
            table.add_column(column)
        for t in notable[:_SHOWN]:
            table.add_row(t.name, f"[red]{t.verdict}[/]", f"{t.dtype_a or '-'} / {t.dtype_b or '-'}",
                          "" if t.max_abs is None else f"{t.max_abs:.3g}",
                          "" if t.changed is None else f"{t.changed:.2%}", t.detail)  # fmt: skip
        console.print(table)
    tok = result.tokenizer
    console.print(f"tokenizer: {tok.summary}" + (f" [dim]({'; '.join(tok.notes)})[/]" if tok.notes else ""), highlight=False)
    colour = "green" if result.same else "bold red"
    console.print(f"[{colour}]{result.verdict}[/]", highlight=False)
    if args.json:
        with atomic_path(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.same else 1
