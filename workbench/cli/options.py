"""The option groups several commands share, defined once so a flag means the same everywhere.

- :func:`add_model_options`: ``--model`` (a flag in every command that loads a model),
  ``--dtype`` (always the *model's* dtype), ``--device`` and ``--no-verify``.
- :func:`add_ray_options`: ``--ray ADDRESS``, ``--workers``, ``--threads`` (``cache`` and ``eval``).

A command's own dtype for something else has its own name (``workbench cache --store-dtype``).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

MODEL_DTYPES = ("float32", "bfloat16", "float16")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--no-verify``: which model, in what precision, where."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help="checkpoint folder, .gguf file or hub id (default: embedded SmolLM2)")
    group.add_argument("--dtype", default="float32", choices=MODEL_DTYPES, help="the model's dtype")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--no-verify", action="store_true", help="skip checklist verification")


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray ADDRESS``, ``--workers``, ``--threads``: run the command's work on Ray workers."""
    group = parser.add_argument_group("Ray (data-parallel)")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on Ray: 'local' (a private instance here) or a cluster address "
                            "('auto', 'ray://host:10001')")
    group.add_argument("--workers", type=int, default=2, help="Ray workers (one model replica each)")
    group.add_argument("--threads", type=int, default=1, help="torch threads per Ray worker")


def load_model_from(args: argparse.Namespace, console: Console) -> Any:
    """The model that :func:`add_model_options`'s flags name, loaded under a spinner."""
    from workbench.models.loading import load_model

    with console.status(f"loading {args.model or 'the embedded model'} ..."):
        return load_model(args.model, dtype=args.dtype, device=args.device, verify=not args.no_verify)
