"""The ``workbench`` command: headless jobs over the same library the notebooks use.

    workbench info [--model M]      architecture, size, dtype, device, hooks, source, checksum status
    workbench verify PATH           integrity check of a checkpoint (exit code 0 ok / 1 failed)
    workbench hooks [--model M]     the hook catalogue (name, shape, what it is)
    workbench cache ...             cache activations over a dataset into a resumable on-disk store
    workbench probe ...             per-layer probe sweep for a concept: table, directions, HTML plot
    workbench patch ...             activation-patching sweep: table + HTML heatmap
    workbench demo [--model M]      the main job: info, a generated answer, activation norms by layer
    workbench eval ...              safety eval suites (safety | quick | one suite): summary table, saved results
    workbench report RUN -o F       self-contained HTML report of a saved eval run (opens offline)
    workbench data pull [NAME]      download the published benchmark files (sha256-checked)
    workbench diff A B              two checkpoints, tensor by tensor (exit code 0 same / 1 different / 2 error)

One module per command group; the options several commands share (``--model``, ``--dtype``,
``--device``, ``--no-verify``; ``--ray``, ``--workers``, ``--threads``) are defined once, in
:mod:`workbench.cli.options`. Every command is ``cmd_*(args, console)`` and prints on the console
it is given.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from workbench.cli import cache, data, demo, diff, models, patch, probe, report
from workbench.cli import eval as eval_command
from workbench.common.errors import WorkbenchError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``workbench`` command; returns its exit code (0 ok, 1 an error, 2 a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bars say what is happening
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    console = Console()
    try:
        return args.run(args, console) or 0
    except (WorkbenchError, ValueError, TypeError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser: each command module registers its own subcommands."""
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    models.add_parsers(sub)  # info, verify, hooks
    for module in (cache, probe, patch, demo, eval_command, report, data, diff):
        module.add_parser(sub)
    return parser

