"""Patching metrics: functions from logits ``[batch, pos, d_vocab]`` to one number.

A metric sees the logits of every prompt in a patched run at once and returns a scalar
(averaging over prompts is the metric's job, as in TransformerLens's patching functions). The
factories here build the usual ones; any callable with the same contract works.

>>> metric = logit_diff(model, " Mary", " John")        # doctest: +SKIP
>>> metric(model(clean_tokens))                          # doctest: +SKIP
tensor(3.1416)
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.common.errors import PatchingError

Metric = Callable[[torch.Tensor], torch.Tensor]


def single_token(model, text: str, argument: str = "token") -> int:
    """The id of ``text`` as exactly one token (no BOS); a clear error when it is not one token."""
    if isinstance(text, int):
        return text
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = [model.to_string(torch.tensor([i])) for i in ids]
        raise PatchingError(
            f"{argument}={text!r} is {len(ids)} tokens {pieces}, not one; metrics compare single "
            "next-token logits (note the leading space: ' Mary' is one token where 'Mary' may not be)"
        )
    return ids[0]


def logit_diff(model, answer: str | int, wrong: str | int, position: int = -1) -> Metric:
    """Mean over prompts of ``logit[answer] - logit[wrong]`` at ``position`` (default: last).

    The metric of the IOI work (Wang et al. 2022) and TransformerLens's patching demos.

    >>> metric = logit_diff(model, " Paris", " Rome")    # doctest: +SKIP
    """
    a, b = single_token(model, answer, "answer"), single_token(model, wrong, "wrong")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position]
        return (last[:, a] - last[:, b]).mean()

    metric.__name__ = f"logit_diff({answer!r} - {wrong!r})"
    return metric


def token_prob(model, token: str | int, position: int = -1) -> Metric:
    """Mean over prompts of the softmax probability of ``token`` at ``position``.

    >>> metric = token_prob(model, " Paris")             # doctest: +SKIP
    """
    t = single_token(model, token)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, position].float().softmax(-1)[:, t].mean()

    metric.__name__ = f"prob({token!r})"
    return metric


def kl_to_clean(model, clean, position: int = -1) -> Metric:
    """Minus the KL divergence KL(clean || patched) of the next-token distribution at ``position``.

    Negated so that, like the other metrics, larger means closer to the clean behaviour: the
    clean run scores 0 and a sweep normalises it like any other metric. ``clean`` is a prompt,
    a list of prompts or a token tensor; its logits are computed once, here.

    >>> metric = kl_to_clean(model, "The Eiffel Tower is in")   # doctest: +SKIP
    """
    tokens = clean if isinstance(clean, torch.Tensor) else model.to_tokens(clean)
    with torch.no_grad():
        reference = model(tokens)[:, position].float().log_softmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != reference.shape[0]:
            raise PatchingError(
                f"kl_to_clean was built for {reference.shape[0]} prompt(s), got logits for {logits.shape[0]}"
            )
        patched = logits[:, position].float().log_softmax(-1)
        kl = (reference.exp() * (reference - patched)).sum(-1)
        return -kl.mean()

    metric.__name__ = "-KL(clean || patched)"
    return metric


def evaluate_metric(metric: Metric, logits: torch.Tensor) -> float:
    """Apply ``metric`` and insist on one number (a clear error naming what came back)."""
    value = metric(logits)
    value = torch.as_tensor(value)
    if value.numel() != 1:
        name = getattr(metric, "__name__", repr(metric))
        raise PatchingError(
            f"metric {name} returned shape {tuple(value.shape)}; it must return one number "
            "(average over prompts, e.g. `.mean()`)"
        )
    return float(value.detach().reshape(()))
