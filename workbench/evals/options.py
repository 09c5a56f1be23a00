"""How a suite is asked to run: the options ``run_eval`` and ``run_suite`` share, in one object.

:class:`EvalOptions` holds what the two public functions both take (data folder, subset,
seed, bad-row policy, progress bar, an external scorer, chat formatting);
:meth:`EvalOptions.params` is the one
place the ``params`` dict of a manifest is built, both for a run and for deciding whether an
earlier run in the same folder can be reused.

>>> opts = EvalOptions(limit=50, seed=1)
>>> opts.params({"mode": "quick"})
{'limit': 50, 'seed': 1, 'errors': 'raise', 'n_bootstrap': 1000, 'mode': 'quick'}
>>> EvalOptions(chat=True, system_prompt="Be brief.").params()["chat"]
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

# Bootstrap resamples behind every 95% CI (seeded by ``seed``).
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class EvalOptions:
    """Options that apply to every suite of a run.

    Attributes:
        data_dir: benchmark data folder; ``None``: ``$WORKBENCH_DATA``, else the per-user folder.
        limit: score a seeded random subset of this many examples (``None``: all).
        seed: seeds the subset, the bootstrap CIs and any sampling.
        errors: ``"raise"`` on a malformed data row, or ``"skip"`` it (counted in the manifest).
        progress: show a progress bar.
        score_examples: ``(model, spec, examples, progress=...) -> samples`` replacing the
            in-process scoring of log-likelihood suites (the Ray runner passes one).
        chat: render each prompt with the model's chat template (as one user turn, with an open
            assistant turn), as lm-evaluation-harness's ``--apply_chat_template`` does; a model
            without a template raises :class:`~workbench.models.chat.NoChatTemplateError`.
        system_prompt: with ``chat``, a system message before each prompt
            (lm-evaluation-harness's ``--system_instruction``).
    """

    data_dir: str | os.PathLike | None = None
    limit: int | None = None
    seed: int = 0
    errors: str = "raise"
    progress: bool = True
    score_examples: Callable[..., Any] | None = None
    chat: bool = False
    system_prompt: str | None = None

    def __post_init__(self):
        # Checked before any model time is spent, for every kind of suite.
        if self.errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {self.errors!r}")
        if self.system_prompt is not None and not self.chat:
            raise ValueError("system_prompt= applies to chat-formatted prompts only; pass chat=True as well")

    def chat_params(self) -> dict[str, Any]:
        """``{"chat": True, "system_prompt": ...}`` when prompts are chat-formatted, else ``{}``
        (manifests of runs without chat stay as they were, and stay reusable)."""
        return {"chat": True, "system_prompt": self.system_prompt} if self.chat else {}

    def params(self, *layers: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's ``params``: these options, then each mapping over them, in order.

        Callers pass the suite file's ``params`` and then the caller's own (a group entry's,
        ``suite_params``, ``run_eval``'s keyword arguments).
        """
        out: dict[str, Any] = {"limit": self.limit, "seed": self.seed, "errors": self.errors,
                               "n_bootstrap": N_BOOTSTRAP, **self.chat_params()}
        for layer in layers:
            out.update(layer)
        return out

    def group_params(self) -> dict[str, Any]:
        """What ``suite.json`` records of a group run's options."""
        return {"limit": self.limit, "seed": self.seed, "errors": self.errors,
                "data_dir": None if self.data_dir is None else str(self.data_dir), **self.chat_params()}
