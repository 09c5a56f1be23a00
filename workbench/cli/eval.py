"""``workbench eval``: run safety eval suites headless, a progress bar per suite, a summary table.

    workbench eval --suite quick --out runs/quick
    workbench eval --model path/to/llama --suite safety --data-dir ../shared/data --out runs/safety
    workbench eval --suite crows_pairs --limit 200 --seed 1 --errors skip --out runs/crows
    workbench eval --suite toxicity --toxicity-mode quick --scorer detoxify:/models/detoxify --out runs/tox
    workbench eval --suite misuse --chat --judge keyword:xstest_strmatch --out runs/misuse

Rerunning with the same ``--out`` reuses suites already finished with the same parameters.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from workbench.cli.options import add_model_options, add_ray_options, load_model_from


def add_parser(sub: Any) -> None:
    """Register ``eval`` on the ``workbench`` command's subparsers."""
    p = sub.add_parser("eval", help="run eval suites (safety | quick | misuse | a suite name)")
    add_model_options(p)
    p.add_argument("--suite", default="quick", help="safety | quick | misuse | a suite name (see --list)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: $WORKBENCH_DATA, else the per-user folder)")
    p.add_argument("--out", default=None, help="results folder (rerun with the same --out to resume)")
    p.add_argument("--limit", type=int, default=None,
                   help="seeded subset of N examples per suite (toxicity: its first N prompts, interleaved across subsets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--errors", default="raise", choices=["raise", "skip"], help="malformed data rows")
    p.add_argument("--toxicity-mode", default=None, choices=["full", "quick"],
                   help="toxicity suite size: full (k = 25, every prompt) or quick (k = 5, a sample); default: the group's")
    p.add_argument("--scorer", default=None,
                   help="toxicity scorer: profanity-check (default), detoxify:PATH or hf:PATH (a local classifier folder)")
    p.add_argument("--chat", action="store_true",
                   help="render prompts with the model's chat template (an error if it has none)")
    p.add_argument("--system-prompt", default=None, help="with --chat: a system message before each prompt")
    p.add_argument("--judge", default=None,
                   help="refusal judge of the refusal suites: keyword:<list> (default: the best-agreeing list) or hf:PATH")
    p.add_argument("--list", action="store_true", help="list suites and groups, then exit")
    add_ray_options(p)
    p.set_defaults(run=cmd_eval)


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from workbench.evals import run_suite
    from workbench.evals.suites import list_groups, list_suites, load_group, load_suite

    if args.list:
        table = Table(title="eval suites")
        for column in ("suite", "version", "data", "metrics"):
            table.add_column(column)
        for name in list_suites():
            spec = load_suite(name)
            table.add_row(name, spec.version, "built-in" if spec.builtin else spec.dataset,
                          ", ".join(m["name"] for m in spec.metrics) or "(plug-in)")
        console.print(table)
        for group in list_groups():
            console.print(f"group [bold]{group}[/]: " + ", ".join(e.suite for e in load_group(group)))
        return 0
    if args.suite not in list_groups():
        load_suite(args.suite)  # fail before loading the model on a typo
    toxicity = {key: value for key, value in (("mode", args.toxicity_mode), ("scorer", args.scorer)) if value}
    groups_with_toxicity = {g for g in list_groups() if "toxicity" in {e.suite for e in load_group(g)}}
    if toxicity and args.suite != "toxicity" and args.suite not in groups_with_toxicity:
        console.print(f"[red]--toxicity-mode/--scorer apply to the toxicity suite, which {args.suite!r} does not run[/]")
        return 2

    if args.system_prompt is not None and not args.chat:
        console.print("[red]--system-prompt needs --chat (the chat template places the system message)[/]")
        return 2
    suite_params = {"toxicity": toxicity} if toxicity else {}
    if args.judge:
        refusal = _refusal_suites(args.suite)
        if not refusal:
            console.print(f"[red]--judge applies to the refusal suites, which {args.suite!r} does not run[/]")
            return 2
        suite_params.update({name: {"judge": args.judge} for name in refusal})

    model = load_model_from(args, console)

    def report(name, res, reused):
        note = " (reused from --out)" if reused else f" in {res.manifest.get('wall_time_s', 0):.1f} s"
        console.print(f"[green]done[/] {name}: {len(res.samples)} examples{note}")

    options = dict(data_dir=args.data_dir, limit=args.limit, seed=args.seed, errors=args.errors, out=args.out,
                   progress=True, on_result=report, suite_params=suite_params or None)
    if args.chat:
        options.update(chat=True, system_prompt=args.system_prompt)
    if args.ray:
        from workbench.distributed.evals import run_suite_ray

        result = run_suite_ray(args.model, args.suite, address=args.ray, workers=args.workers, threads=args.threads,
                               device=args.device, model_dtype=args.dtype, verify=not args.no_verify, model=model,
                               **options)
    else:
        result = run_suite(model, args.suite, **options)
    console.print(summary_table(result))
    print_judges(result, console)
    print_skipped(result.skipped, console)
    for name, res in result.results.items():
        n_skip = res.manifest.get("n_skipped", 0)
        if n_skip:
            console.print(f"[yellow]{name}: {n_skip} malformed row(s) skipped[/] (listed in its manifest.json)")
    if args.out:
        console.print(f"wrote {args.out}/ (report: workbench report {args.out} -o report.html)")
    return 0


def summary_table(result) -> Table:
    """Headline metrics of each suite of a :class:`~workbench.evals.SuiteResult` with 95% CIs and n."""
    table = Table(title=f"{result.group}: headline metrics (95% bootstrap CI)")
    for column, justify in (("suite", "left"), ("metric", "left"), ("value", "right"),
                            ("95% CI", "right"), ("n", "right")):
        table.add_column(column, justify=justify)
    frame = result.metrics
    for row in frame[frame["category"] == "all"].itertuples():
        ci = "" if math.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        value = "nan" if math.isnan(row.value) else f"{row.value:.3f}"
        table.add_row(row.suite, row.metric, value, ci, str(row.n))
    return table


def _refusal_suites(name: str) -> list[str]:
    """The refusal-kind suites a ``--suite`` value runs (a group's, or the suite itself)."""
    from workbench.evals.suites import list_groups, load_group, load_suite

    names = [e.suite for e in load_group(name)] if name in list_groups() else [name]
    return [load_suite(n).name for n in names if load_suite(n).kind == "refusal"]


def print_judges(result, console: Console) -> None:
    """For each refusal suite: the judge its rates come from and that judge's measured agreement."""
    for name, res in result.results.items():
        judge = res.manifest.get("judge")
        if isinstance(judge, dict):
            console.print(f"{name}: refusal judged by [bold]{judge.get('name')}[/]: {judge.get('agreement')}",
                          highlight=False, overflow="fold")


def print_skipped(skipped: dict[str, str], console: Console) -> None:
    """One line per suite that did not run, then one line on getting the data if that was why."""
    from workbench.evals.data import data_hint

    for name, why in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {why}", highlight=False, overflow="ignore", crop=False)
    hint = data_hint(skipped)
    if hint:
        console.print(hint, highlight=False)
