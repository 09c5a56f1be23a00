"""Seeded, KV-cached nucleus sampling through the hooked model: k continuations of one prompt.

Generic over suites: toxicity samples with it, and the misuse and refusal suites will. The
prompt runs once through the TransformerLens bridge and its key/value cache is copied for the
``k`` rows, which then decode together one token per step, also through the bridge, so
steering and ablation hooks open on the model act on the prompt and on every generated token.
Each call draws from its own ``torch.Generator`` seeded by ``seed`` (for a suite,
:func:`example_seed` of the example id), so results depend neither on the order of examples
nor on the global RNG, which is left untouched.

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
