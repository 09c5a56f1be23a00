"""Decoding through the hooked model: seeded nucleus sampling, and batched greedy decoding.

Sampling (:func:`sample_tokens`) gives k continuations of one prompt; toxicity samples with it. The
prompt runs once through the TransformerLens bridge and its key/value cache is copied for the
``k`` rows, which then decode together one token per step, also through the bridge, so
steering and ablation hooks open on the model act on the prompt and on every generated token.
Each call draws from its own ``torch.Generator`` seeded by ``seed`` (for a suite,
:func:`example_seed` of the example id), so results depend neither on the order of examples
nor on the global RNG, which is left untouched.

Greedy decoding (:func:`greedy_tokens`) runs several prompts together, left-padded with an
attention mask and position ids, so each prompt's tokens are what it gives alone (to float
rounding) while the batch shares every forward; the refusal suites decode with it.

>>> sample_continuations(model, "The weather today", Sampling(k=2), seed=1)  # doctest: +SKIP
[' is sunny and warm', ' was not good']
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; the defaults are RealToxicityPrompts' (nucleus p = 0.9, 20 tokens, k = 25).

    Attributes:
        k: continuations per prompt.
        top_p: nucleus mass (Holtzman et al. 2020).
        max_new_tokens: tokens generated at most (fewer when every row reached EOS).
        temperature: logits are divided by it before the nucleus is cut.
        seed: recorded with the parameters; each call takes its own ``seed`` argument.
    """

    k: int = 25
    top_p: float = 0.9
    max_new_tokens: int = 20
    temperature: float = 1.0
    seed: int = 0


def example_seed(seed: int, example_id: str) -> int:
    """The sampling seed of one example: a hash of ``(seed, example_id)``, independent of order.

    >>> example_seed(0, "rtp_toxic:0001") == example_seed(0, "rtp_toxic:0001")
    True
    """
    digest = hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_continuations(model, prompt: str, sampling: Sampling, seed: int) -> list[str]:
    """``sampling.k`` sampled continuations of ``prompt`` (text after the prompt, up to EOS).

    Sampled by :func:`sample_tokens` through the bridge (so hooks open on the model apply);
    the global RNG state is left as it was.

    >>> sample_continuations(model, "The weather today", Sampling(k=2), seed=1)  # doctest: +SKIP
    [' is sunny and warm', ' was not good']
    """
    rows = sample_tokens(model, prompt, sampling, seed)
    return [model.tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def sample_tokens(model, prompt: str, sampling: Sampling, seed: int) -> list[list[int]]:
    """The token ids behind :func:`sample_continuations`: k lists, each cut at the first EOS.

    The prompt runs once; its key/value cache is copied for the k rows, which then decode
    together one token per step through the bridge (``model(tokens, past_key_values=...)``), so
    open hooks act on the prompt and on every decode step. Each step samples from the nucleus
    (the fewest most-probable tokens whose probability reaches ``top_p``, as Holtzman et al.
    2020 and Hugging Face's ``TopPLogitsWarper`` define it) with a generator seeded by ``seed``;
    the global RNG is not touched.

    >>> sample_tokens(model, "The weather today", Sampling(k=2, max_new_tokens=3), seed=1)  # doctest: +SKIP
    [[374, 34145, 284], [574, 2]]
    """
    tokens = model.to_tokens(prompt).to(model.device)  # [1, pos], BOS prepended as the model expects
    generator = torch.Generator(device=tokens.device).manual_seed(seed)
    eos = model.tokenizer.eos_token_id
    rows: list[list[int]] = [[] for _ in range(sampling.k)]
    finished = torch.zeros(sampling.k, dtype=torch.bool, device=tokens.device)
    with torch.no_grad(), warnings.catch_warnings():
        # transformers renames past_key_values to cache=; the bridge still takes the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        logits, cache = model(tokens, return_type="logits_and_cache")
        cache.batch_repeat_interleave(sampling.k)
        last = logits[:, -1].expand(sampling.k, -1)
        for step in range(sampling.max_new_tokens):
            nxt = nucleus_sample(last, sampling.top_p, sampling.temperature, generator)
            for i, t in enumerate(nxt.tolist()):
                if not finished[i]:
                    rows[i].append(t)
            if eos is not None:
                finished |= nxt == eos
            if bool(finished.all()) or step == sampling.max_new_tokens - 1:
                break
            last = model(nxt[:, None], past_key_values=cache)[:, -1]
    return [row[: row.index(eos)] if eos is not None and eos in row else row for row in rows]


def nucleus_sample(logits: torch.Tensor, top_p: float, temperature: float,
                   generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits [rows, vocab]`` from its top-``p`` nucleus.

    The nucleus is the shortest run of most-probable tokens whose summed probability reaches
    ``top_p`` (always at least one token); probabilities are renormalised inside it. Only the
    top few hundred tokens are sorted unless a row's nucleus is wider than that.

    >>> g = torch.Generator().manual_seed(0)
    >>> nucleus_sample(torch.tensor([[5.0, 0.0, 0.0]]), 0.9, 1.0, g)
    tensor([0])
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    width = min(256, probs.shape[-1])
    while True:
        top, index = probs.topk(width, dim=-1)  # sorted, most probable first
        mass_before = top.cumsum(-1) - top
        if width == probs.shape[-1] or bool((mass_before[:, -1] + top[:, -1] >= top_p).all()):
            break
        width = min(width * 8, probs.shape[-1])
    keep = mass_before < top_p  # the token that crosses top_p is kept; the first always is
    pick = torch.multinomial(top * keep, 1, generator=generator)
    return index.gather(-1, pick)[:, 0]


# --- greedy, batched -------------------------------------------------------------------------


def greedy_tokens(model, prompts_ids: list[list[int]], max_new_tokens: int, batch_size: int = 8,
                  stop_at_eos: bool = True) -> list[list[int]]:
    """Greedy continuations of several prompts, ``batch_size`` decoded together; input order kept.

    Prompts are sorted by length (so a batch holds similar lengths and little padding), each
    batch is left-padded and run with an attention mask that hides the padding and position
    ids that start every prompt at 0, so a prompt's logits are those it has alone, to float
    rounding (padding changes matrix shapes, not the arithmetic of a row). The prompt runs once;
    each decode step feeds one token per row with the key/value cache, through the bridge, so
    hooks open on the model (``model.steer``, ``model.ablate``) act on the prompt and every step.
    Hooks see left-padded rows: one indexing positions should count from the end. A row that
    reaches a stop token leaves the batch (its cache rows are dropped).

    Args:
        model: a :class:`~workbench.models.hooked.HookedLlama`.
        prompts_ids: token ids of each prompt, as the model should see them (BOS included).
        max_new_tokens: tokens generated at most per prompt.
        batch_size: prompts decoded together.
        stop_at_eos: stop a prompt at the first stop token (the tokenizer's EOS and the
            generation config's ``eos_token_id``, as Hugging Face ``generate`` does); the stop
            token is not returned.

    Returns:
        One list of new token ids per prompt, in the order given.

    >>> ids = [model.to_tokens(p)[0].tolist() for p in ["The capital of France is", "Hi"]]  # doctest: +SKIP
    >>> greedy_tokens(model, ids, max_new_tokens=3)                             # doctest: +SKIP
    [[12366, 30, 378], [28, 339, 346]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for i, ids in enumerate(prompts_ids):
        if len(ids) == 0:
            raise ValueError(f"prompts_ids[{i}] is empty: a prompt needs at least one token (BOS)")
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    stops = stop_ids(model) if stop_at_eos else set()
    out: list[list[int]] = [[] for _ in prompts_ids]
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        rows = _greedy_batch(model, [list(prompts_ids[i]) for i in chunk], max_new_tokens, stops)
        for i, row in zip(chunk, rows, strict=True):
            out[i] = row
    return out


def stop_ids(model) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the generation config's.

    >>> stop_ids(model)                                                         # doctest: +SKIP
    {2}
    """
    ids = {model.tokenizer.eos_token_id}
    config = getattr(getattr(model, "hf_model", None), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple, set)) else [extra])
    return {int(i) for i in ids if i is not None}


def _greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, stops: set[int]) -> list[list[int]]:
    rows: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return rows
    device = model.device
    width = max(len(p) for p in prompts)
    pad = model.pad_token_id
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, ids in enumerate(prompts):  # left padding: every prompt ends at the last column
        tokens[b, width - len(ids):] = torch.tensor(ids)
        mask[b, width - len(ids):] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, width]: 0 at each prompt's first token
    stop = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    alive = list(range(len(prompts)))  # rows of the input still decoding, in cache order
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        logits, cache = model(tokens, attention_mask=mask, position_ids=positions, return_type="logits_and_cache")
        nxt = logits[:, -1].argmax(-1)  # [batch]
        for step in range(max_new_tokens):
            for b, t in zip(alive, nxt.tolist(), strict=True):
                if t not in stops:
                    rows[b].append(t)
            keep = ~torch.isin(nxt, stop)  # [batch] rows that go on
            if step == max_new_tokens - 1 or not bool(keep.any()):
                break
            if not bool(keep.all()):
                index = keep.nonzero()[:, 0]
                cache.batch_select_indices(index)
                alive = [alive[i] for i in index.tolist()]
                nxt, mask, positions = nxt[index], mask[index], positions[index]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            positions = positions[:, -1:] + 1
            nxt = model(nxt[:, None], past_key_values=cache, attention_mask=mask,
                        position_ids=positions)[:, -1].argmax(-1)
    return rows


