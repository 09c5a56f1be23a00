"""``workbench cache``: activations over a dataset into a resumable on-disk store.

    workbench cache --data sentences.csv --text-column text --hooks 'blocks.*.hook_resid_post' \\
                    --positions all --store-dtype float16 --out runs/acts
    workbench cache --model /shared/llama-7b --data texts.csv --out /shared/runs/acts --ray auto --workers 8

``--dtype`` is the model's dtype (as in every command); ``--store-dtype`` is the dtype the
activations are written in. Rerunning the same command resumes the store; ``--repair`` first
drops shards whose files are damaged (``workbench verify STORE`` lists them) so they are recomputed.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from workbench.cli.options import add_model_options, add_ray_options, load_model_from
from workbench.common.errors import WorkbenchError


def add_parser(sub: Any) -> None:
    """Register ``cache`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("cache", help="cache activations over a dataset (resumable)")
    add_model_options(p)
    p.add_argument("--data", required=True, help="CSV, JSONL, Parquet or text file (one example per line)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"], help="names or globs")
    p.add_argument("--positions", default="last", help="last | mean | all | START:STOP | a column name")
    p.add_argument("--store-dtype", default="float16", choices=["float16", "float32"],
                   help="the dtype activations are stored in")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--too-long", default="truncate", choices=["truncate", "error"])
    p.add_argument("--out", required=True, help="store folder (rerun the same command to resume)")
    p.add_argument("--shard-size", type=int, default=4096, help="examples per shard (the unit of resume and of Ray work)")
    p.add_argument("--repair", action="store_true",
                   help="first drop damaged shards (checksum, size or missing file) so this run recomputes them")
    add_ray_options(p)
    p.set_defaults(run=cmd_cache)


def cmd_cache(args: argparse.Namespace, console: Console) -> int:
    from workbench.store import cache_activations

    if args.repair:
        _repair(args.out, console)
    frame = read_table(args.data)
    if args.limit is not None:
        frame = frame.head(args.limit)
    options = dict(hooks=args.hooks, positions=parse_positions(args.positions), path=args.out,
                   dtype=args.store_dtype, batch_size=args.batch_size, text_column=args.text_column,
                   too_long=args.too_long, shard_size=args.shard_size)
    if args.ray:
        from workbench.distributed.cache import cache_activations_ray

        store = cache_activations_ray(args.model, frame, address=args.ray, workers=args.workers,
                                      threads=args.threads, device=args.device, model_dtype=args.dtype,
                                      verify=not args.no_verify, **options)
    else:
        store = cache_activations(load_model_from(args, console), frame, **options)
    console.print(f"{store!r}")
    for hook in store.hooks[:3]:
        console.print(f"  {hook}: {store[hook].shape} {store[hook].dtype}")
    return 0


def _repair(out: str, console: Console) -> None:
    from pathlib import Path

    from workbench.store import repair_store
    from workbench.store.store import MANIFEST

    if not (Path(out) / MANIFEST).is_file():
        console.print(f"--repair: {out} holds no store yet; nothing to repair")
        return
    dropped = repair_store(out)
    if dropped:
        console.print(f"--repair: dropped damaged shard(s) {dropped} from {out}; recomputing them")
    else:
        console.print(f"--repair: every shard of {out} matches its checksum")


def read_table(path: str):
    """A data file as a DataFrame: ``.csv``, ``.tsv``, ``.jsonl``, ``.json``, ``.parquet`` or text lines."""
    from pathlib import Path

    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise WorkbenchError(f"{file}: no such data file")
    try:
        if file.suffix == ".csv":
            return pd.read_csv(file)
        if file.suffix == ".tsv":
            return pd.read_csv(file, sep="\t")
        if file.suffix in (".jsonl", ".json"):
            return pd.read_json(file, lines=file.suffix == ".jsonl")
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
    except ValueError as err:
        raise WorkbenchError(f"{file}: cannot parse: {err}") from None
    return pd.DataFrame({"text": file.read_text().splitlines()})


def parse_positions(text: str):
    """``"last"``, ``"mean"``, ``"all"``, ``"START:STOP"`` (a slice) or a column name.

    >>> parse_positions("-2:"), parse_positions("last")
    (slice(-2, None, None), 'last')
    """
    if ":" in text:
        start, stop = (int(x) if x else None for x in text.split(":", 1))
        return slice(start, stop)
    return text
