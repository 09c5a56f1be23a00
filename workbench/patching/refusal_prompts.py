"""Prompts for the refusal direction: rendering, the template's own tokens, the refusal score, data.

- :func:`render`: one instruction as the model sees it (``model.chat_tokens``).
- :func:`post_instruction_tokens`: what the template adds after the user's message (Arditi et al.'s
  ``eoi_toks``), where the candidate directions are read.
- :func:`resolve_refusal_tokens`: the first tokens of refusals in this template (the default
  refusal tokens: the first token after the generation prompt of each of :data:`REFUSAL_PHRASES`).
- :func:`refusal_scores`: the first-token refusal score of instructions, under the open contexts.
- :func:`arditi_splits`: Arditi et al.'s harmful / harmless train and val splits in the data directory.
"""

from __future__ import annotations

import json
import random
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import DataError, MissingDataError, PatchingError
from workbench.patching.refusal_select import PromptSet, refusal_score, run_rows

SPLITS_DIR = "refusal_direction/dataset/splits"
# Arditi et al.'s pipeline/config.py: 128 train and 32 validation prompts per class, sampled with
# random.seed(42) in the order harmful train, harmless train, harmful val, harmless val.
N_TRAIN, N_VAL, SEED = 128, 32, 42
# Openings of refusals; their first tokens in the template are the default refusal tokens.
REFUSAL_PHRASES = ("I'm sorry", "I cannot", "I can't", "As an AI")

def render(model, instruction: str, system: str | None = None) -> list[int]:
    """Token ids of one user instruction rendered by the model's chat template (with the
    generation prompt), as ``model.chat_tokens`` gives them."""
    return [int(t) for t in model.chat_tokens(instruction, system=system)[0].tolist()]


def post_instruction_tokens(model, system: str | None = None) -> list[int]:
    """The tokens the chat template puts after the user's message (Arditi et al.'s ``eoi_toks``).

    Two instructions with different last tokens are rendered; the tokens their renderings end
    with in common are the template's.

    >>> model.to_str_tokens(torch.tensor(post_instruction_tokens(model)))   # doctest: +SKIP
    ['<|im_end|>', '\\n', '<|im_start|>', 'assistant', '\\n']
    """
    a, b = render(model, "a", system), render(model, "?", system)
    n = 0
    while n < min(len(a), len(b)) - 1 and a[-1 - n] == b[-1 - n]:
        n += 1
    if n == 0:
        raise PatchingError("the chat template adds no tokens after the user's message, so there are no "
                            "post-instruction positions to read the refusal direction at; set a template "
                            "that ends with the assistant's turn (model.set_chat_template)")
    return a[-n:]


def resolve_refusal_tokens(model, refusal_tokens=None, system: str | None = None) -> list[int]:
    """Refusal token ids: given ids, or the first token of each phrase as the model's reply.

    A phrase is rendered as the assistant's message after a user message; its first token after
    the generation prompt is kept (unknown-token ids and phrases the template does not render
    after the generation prompt are skipped).
    """
    if refusal_tokens is not None and not isinstance(refusal_tokens, (str, bytes)):
        refusal_tokens = list(refusal_tokens)
    if refusal_tokens is not None and all(isinstance(t, (int, np.integer)) for t in refusal_tokens):
        ids = [int(t) for t in refusal_tokens]
        vocab = model.cfg.d_vocab
        bad = [t for t in ids if not 0 <= t < vocab]
        if not ids or bad:
            raise PatchingError(f"refusal_tokens: ids {bad or ids} are not in the vocabulary (0..{vocab - 1})")
        return list(dict.fromkeys(ids))
    phrases = [refusal_tokens] if isinstance(refusal_tokens, str) else list(refusal_tokens or REFUSAL_PHRASES)
    prompt = render(model, "Hello", system)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    found = []
    for phrase in phrases:
        convo = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": str(phrase)}]
        full = [int(t) for t in model.chat_tokens(convo, add_generation_prompt=False, system=system)[0].tolist()]
        if full[: len(prompt)] == prompt and len(full) > len(prompt) and full[len(prompt)] != unk:
            found.append(full[len(prompt)])
    if not found:
        raise PatchingError(f"no refusal token found for the phrases {phrases} in this chat template (unknown "
                            "tokens, or the template does not render a reply after its generation prompt); "
                            "pass refusal_tokens=[ids]")
    return list(dict.fromkeys(found))


def refusal_scores(model, instructions: Sequence[str], refusal_tokens=None, *, system: str | None = None,
                   batch_size: int = 16, rendered: list[list[int]] | None = None) -> np.ndarray:
    """First-token refusal score of each instruction (rendered by the chat template), under the
    contexts now open; those must act the same at every position (``model.steer``,
    ``model.ablate`` and ``RefusalDirection``'s contexts do): the template's shared opening runs once.

    >>> with rd.bypass():                                                     # doctest: +SKIP
    ...     refusal_scores(model, rd.prompts["harmful_val"], rd.refusal_tokens).mean()
    """
    tokens = resolve_refusal_tokens(model, refusal_tokens, system=system)
    rendered = rendered if rendered is not None else [render(model, x, system) for x in instructions]
    prompts = PromptSet.of(rendered)
    values, _ = run_rows(model, prompts, [(0, p) for p in range(len(prompts))],
                         lambda logits, _: refusal_score(logits, tokens)[:, None], batch_size=batch_size)
    return values[:, 0].numpy()


def render_all(model, instructions: list[str], eoi: list[int], name: str, system) -> list[list[int]]:
    """Every instruction rendered; each must end with the post-instruction tokens ``eoi``."""
    out = []
    for i, instruction in enumerate(instructions):
        ids = render(model, instruction, system)
        if ids[-len(eoi):] != eoi:
            raise DataError(f"{name} prompt {i} ({instruction[:60]!r}) does not end with the template's "
                            f"post-instruction tokens {eoi} once rendered (its end merges with them); "
                            "drop or reword it")
        out.append(ids)
    return out


# --- data ------------------------------------------------------------------------------------------


def arditi_splits(data_dir=None) -> dict[str, list[str]]:
    """Arditi et al.'s four splits (all rows): ``harmful_train``, ``harmless_train``,
    ``harmful_val``, ``harmless_val``, from ``refusal_direction/dataset/splits`` in the data directory."""
    folder = resolve_data_dir(data_dir, needed_by="refusal_direction") / SPLITS_DIR
    out = {}
    for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val"):
        path = folder / f"{name}.json"
        if not path.is_file():
            raise MissingDataError(f"refusal_direction: {path} is missing; it holds Arditi et al.'s splits "
                                   "(set WORKBENCH_DATA, or pass harmful=/harmless= lists)",
                                   short=f"refusal_direction: {path.name} missing")
        rows = json.loads(path.read_text())
        try:
            out[name] = [str(row["instruction"]) for row in rows]
        except (KeyError, TypeError):
            raise DataError(f"{path}: every row must be an object with an 'instruction'") from None
    return out


def prompt_sets(harmful, harmless, n_train, n_val, seed, data_dir) -> dict[str, list[str]]:
    """The four sets (``harmful_train`` ... ``harmless_val``) from the user's data or Arditi's splits."""
    rng = random.Random(seed)
    splits = arditi_splits(data_dir) if harmful is None or harmless is None else {}
    out = {}
    for kind, given in (("harmful", harmful), ("harmless", harmless)):
        if given is None:
            continue
        train, val = _split(given, kind, n_train, n_val, rng)
        out[f"{kind}_train"], out[f"{kind}_val"] = train, val
    # Arditi's order of random.sample calls, so the defaults are their prompts.
    for name, n in (("harmful_train", n_train or N_TRAIN), ("harmless_train", n_train or N_TRAIN),
                    ("harmful_val", n_val or N_VAL), ("harmless_val", n_val or N_VAL)):
        if name not in out:
            out[name] = rng.sample(splits[name], min(n, len(splits[name])))
    return {name: out[name] for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}


def _split(given, kind: str, n_train, n_val, rng) -> tuple[list[str], list[str]]:
    if isinstance(given, pd.DataFrame):
        column = next((c for c in ("instruction", "prompt") if c in given.columns), None)
        if column is None:
            raise DataError(f"{kind}: a DataFrame needs an 'instruction' or 'prompt' column; it has {list(given.columns)}")
        if "split" in given.columns:
            unknown = set(given["split"]) - {"train", "val"}
            if unknown:
                raise DataError(f"{kind}: column 'split' must hold 'train' or 'val', found {sorted(map(str, unknown))}")
            train = given.loc[given["split"] == "train", column].astype(str).tolist()
            val = given.loc[given["split"] == "val", column].astype(str).tolist()
            return _cap(train, n_train, kind, "train"), _cap(val, n_val, kind, "val")
    items = rng.sample(instructions_of(given, kind), len(instructions_of(given, kind)))
    n_v = n_val if n_val is not None else min(N_VAL, len(items) // 4)
    train, val = items[n_v:], items[:n_v]
    return _cap(train, n_train, kind, "train"), _cap(val, n_val, kind, "val")


def instructions_of(given, kind: str) -> list[str]:
    """Instructions from a list of strings or a DataFrame's ``instruction`` / ``prompt`` column."""
    if isinstance(given, pd.DataFrame):
        column = next((c for c in ("instruction", "prompt") if c in given.columns), None)
        if column is None:
            raise DataError(f"{kind}: a DataFrame needs an 'instruction' or 'prompt' column; it has {list(given.columns)}")
        given = given[column]
    items = [given] if isinstance(given, str) else list(given)
    if not items or not all(isinstance(x, str) for x in items):
        raise DataError(f"{kind}: expected instructions as strings (a list, or a DataFrame column), at least one")
    return items


def _cap(items: list[str], n, kind: str, split: str) -> list[str]:
    if not items:
        raise DataError(f"{kind}: no {split} prompts (pass more instructions, or a 'split' column)")
    return items[:n] if n is not None else items
