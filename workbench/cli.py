"""The ``workbench`` command: headless jobs over the same library the notebooks use.

    workbench info [MODEL]      architecture, size, dtype, device, hooks, source, checksum status
    workbench verify PATH       integrity check of a checkpoint (exit code 0 ok / 1 failed)
    workbench hooks [MODEL]     the hook catalogue (name, shape, what it is)
    workbench cache ...         cache activations over a dataset into a resumable on-disk store
    workbench probe ...         per-layer probe sweep for a concept: table, directions, HTML plot
    workbench patch ...         activation-patching sweep: table + HTML heatmap
    workbench demo [MODEL]      the main job: info, a generated answer, activation norms by layer
    workbench eval ...          safety eval suites (safety | quick | one suite): summary table, saved results
    workbench report RUN -o F   self-contained HTML report of a saved eval run (opens offline)
    workbench data pull [NAME]  download the published benchmark files (sha256-checked)
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from workbench.errors import WorkbenchError

console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bars say what is happening
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (WorkbenchError, ValueError, TypeError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", nargs="?", help="checkpoint folder, .gguf file or hub id (default: embedded SmolLM2)")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--no-verify", action="store_true", help="skip checklist verification")

    p = sub.add_parser("info", help="describe a model")
    model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("verify", help="check a checkpoint's checksums and file structure")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("hooks", help="list the hook catalogue")
    model_args(p)
    p.add_argument("--filter", default=None, help="glob on hook names, e.g. 'blocks.*.hook_resid_post'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_hooks)

    p = sub.add_parser("cache", help="cache activations over a dataset (resumable)")
    p.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    p.add_argument("--data", required=True, help="CSV, JSONL, Parquet or text file (one example per line)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"], help="names or globs")
    p.add_argument("--positions", default="last", help="last | mean | all | START:STOP | a column name")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="on-disk dtype")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--too-long", default="truncate", choices=["truncate", "error"])
    p.add_argument("--out", required=True, help="store folder (rerun the same command to resume)")
    p.add_argument("--device", default=None)
    p.add_argument("--shard-size", type=int, default=4096, help="examples per shard (the unit of resume and of Ray work)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on Ray: 'local' (a private instance here) or a cluster address ('auto', 'ray://host:10001')")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (one model replica each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per Ray worker")
    p.set_defaults(run=cmd_cache)

    p = sub.add_parser("probe", help="probe every layer for a concept (probes/*.yaml)")
    p.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    p.add_argument("--concept", required=True, help="a concept name (see probes/) or a concept file")
    p.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"])
    p.add_argument("--positions", default="last", help="last | mean | a column name")
    p.add_argument("--method", default="logistic", choices=["logistic", "mass_mean", "ridge"])
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="balanced subsample of N examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="benchmark data (default: $WORKBENCH_DATA)")
    p.add_argument("--out", required=True, help="folder for frame.parquet, directions.safetensors, plot.html")
    p.add_argument("--device", default=None)
    p.set_defaults(run=cmd_probe)

    from workbench.patching.cli import add_parser as add_patch_parser

    add_patch_parser(sub)

    p = sub.add_parser("demo", help="the main job on a model (default: the embedded one)")
    model_args(p)
    p.add_argument("--prompt", default="Q: What is the capital of France?\nA:")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--suite", action="store_true",
                   help="also run the quick safety suite, write its HTML report and run notebook 04 headless")
    p.add_argument("--suite-out", default="runs/quick-suite", help="folder for the suite results and the report")
    p.set_defaults(run=cmd_demo)

    from workbench.evals.cli import add_parser as add_eval_parser

    add_eval_parser(sub)

    p = sub.add_parser("report", help="self-contained HTML report of a saved eval run")
    p.add_argument("run_dir", help="a saved eval folder (EvalResult or suite group)")
    p.add_argument("-o", "--out", default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--top", type=int, default=10, help="examples listed per suite")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("data", help="benchmark data: `workbench data pull`")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("pull", help="download the published benchmark files, checked by sha256")
    p.add_argument("names", nargs="*", help="datasets (default: all)")
    p.add_argument("--only", action="append", help="a dataset to fetch (repeatable)")
    p.add_argument("--dest", default=None, help="data directory (default: $WORKBENCH_DATA, else the user data dir)")
    p.add_argument("--base-url", default="https://raw.githubusercontent.com", help="mirror of raw GitHub")
    p.set_defaults(run=cmd_data_pull)
    return parser


def cmd_report(args) -> int:
    from pathlib import Path

    from workbench.evals.report import write_report

    out = write_report(args.run_dir, args.out or Path(args.run_dir) / "report.html", top=args.top)
    console.print(f"wrote {out}")
    return 0


def cmd_data_pull(args) -> int:
    from workbench.evals.data_pull import cli_pull

    return cli_pull(args, console)


def _load(args):
    from workbench.models.loading import load_model

    with console.status(f"loading {args.model or 'the embedded model'} ..."):
        return load_model(args.model, dtype=args.dtype, device=args.device, verify=not args.no_verify)


def print_info(info: dict) -> None:
    table = Table(title=f"model: {info['name']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        if key == "n_params":
            value = f"{value:,}"
        table.add_row(key, str(value))
    console.print(table)


def cmd_info(args) -> int:
    info = _load(args).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_info(info)
    return 0


def cmd_verify(args) -> int:
    from workbench.models.verify import verify_checkpoint

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


def cmd_hooks(args) -> int:
    from workbench.hooks import names_filter_fn

    frame = _load(args).hook_catalogue()
    if args.filter:
        frame = frame[frame["name"].map(names_filter_fn(args.filter))]
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


def cmd_cache(args) -> int:
    from workbench.models.loading import load_model
    from workbench.store import cache_activations

    frame = read_table(args.data)
    if args.limit is not None:
        frame = frame.head(args.limit)
    options = dict(hooks=args.hooks, positions=parse_positions(args.positions), path=args.out, dtype=args.dtype,
                   batch_size=args.batch_size, text_column=args.text_column, too_long=args.too_long,
                   shard_size=args.shard_size)
    if args.ray:
        from workbench.distributed.cache import cache_activations_ray

        store = cache_activations_ray(args.model, frame, address=args.ray, workers=args.workers,
                                      threads=args.threads, device=args.device, **options)
    else:
        with console.status(f"loading {args.model or 'the embedded model'} ..."):
            model = load_model(args.model, device=args.device)
        store = cache_activations(model, frame, **options)
    console.print(f"{store!r}")
    for hook in store.hooks[:3]:
        console.print(f"  {hook}: {store[hook].shape} {store[hook].dtype}")
    return 0


def cmd_probe(args) -> int:
    from pathlib import Path

    from workbench.models.loading import load_model
    from workbench.probing import probe_sweep

    with console.status(f"loading {args.model or 'the embedded model'} ..."):
        model = load_model(args.model, device=args.device)
    result = probe_sweep(model, args.concept, hooks=args.hooks, positions=args.positions, method=args.method,
                         cv=args.cv, limit=args.limit, seed=args.seed, data_dir=args.data_dir)
    out = Path(args.out)
    result.save(out)
    result.plot().write_html(out / "plot.html", include_plotlyjs=True)  # inline: opens offline
    table = Table(title=f"{result.concept}: {result.method} probe, {result.provenance['cv']}-fold grouped CV")
    metrics = [m for m in ("accuracy", "control_accuracy", "selectivity", "r2") if m in set(result.frame["metric"])]
    for column in ["layer", *metrics]:
        table.add_column(column, justify="right")
    wide = result.frame.pivot(index="hook", columns="metric", values="mean").loc[result.provenance["hooks"]]
    for hook, row in wide.iterrows():
        table.add_row(hook.removesuffix(".hook_resid_post"), *(f"{row[m]:.3f}" for m in metrics))
    console.print(table)
    console.print(f"best layer: {result.best_layer()}; wrote {out}/")
    return 0


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
    """``"last"``, ``"mean"``, ``"all"``, ``"START:STOP"`` (a slice) or a column name."""
    if ":" in text:
        start, stop = (int(x) if x else None for x in text.split(":", 1))
        return slice(start, stop)
    return text


def cmd_demo(args) -> int:
    from workbench.demo import run_demo

    model = _load(args)
    run_demo(model, prompt=args.prompt, max_new_tokens=args.max_new_tokens, console=console)
    if getattr(args, "suite", False):
        from workbench.demo import run_suite_demo

        run_suite_demo(model, args.suite_out, console=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
