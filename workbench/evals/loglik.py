"""Summed log-likelihood of continuations given contexts, through the hooked model.

Conventions follow lm-evaluation-harness's Hugging Face backend (``HFLM`` /
``TemplateLM.loglikelihood`` and ``_encode_pair``, lm-eval 0.4.13, default ``add_bos_token``),
so scores are the same as its on the same model and tokenizer:

* the context's trailing whitespace moves to the start of the continuation;
* a non-empty context is encoded with the checkpoint's own tokenizer default: BOS prepended only
  if the checkpoint's tokenizer adds it (LLaMA's SentencePiece does; the embedded SmolLM2's does
  not, although the TransformerLens bridge's copy of it always does); a text that already starts
  with the BOS string gets none added;
* continuation tokens are those of ``tok(context + continuation)`` after the context's own
  tokens (BPE merges across the boundary are honoured as lm-eval does);
* an empty context becomes the single prefix token (BOS, else EOS) and the continuation is
  encoded without special tokens; this is how CrowS-Pairs sentences are scored;
* the score is the sum of ``log_softmax`` over the vocabulary at the continuation positions;
* a chat-rendered context (``run_eval(..., chat=True)``, see ``workbench.evals.scoring.chat_render``)
  is scored the same way, with ``specials_in_text=True``: special-token strings in it
  (``<|im_start|>``, ``<s>``) are those tokens, and a context that begins with the BOS string gets
  no second BOS, as lm-eval's ``tok_encode`` has it. Its trailing newline after the assistant
  header moves to the continuation like any trailing whitespace.

Every forward pass goes through ``model(tokens)`` (the TransformerLens bridge), never
``model.hf_model`` directly, so steering / ablation hooks that are active on the model apply
during evaluation. Speed: many requests sharing one long context (multiple choice) run the
context once and reuse its key/value cache for all the options, a primer common to all contexts
(few-shot) runs once for all; every other request is packed with others into prefix trees, so a
token prefix that several requests share (a sentence pair that differs in one word, short
options of one question) runs once; packed rows are batched under a token budget. Attention
runs fused (SDPA, as in lm-eval's Hugging Face model) while scoring, except in layers whose
pattern or scores something hooks; scores therefore match a direct forward to float rounding
(about 1e-4 on a sentence's summed log-likelihood), not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# A context shared by several requests runs once (KV cache reused) only when that saves at
# least MIN_SAVED_TOKENS token positions: the shared path costs a separate batch-of-one forward
# for the context, which only pays off when the context is long or has many options.
MIN_SHARED_CONTEXT = 16
MIN_SAVED_TOKENS = 64
# Tokens per packed prefix-tree row (see _score_plain): long enough to hold many short requests,
# short enough that the row's attention (quadratic in it) stays cheap next to the MLPs.
ROW_TOKENS = 128
# Padded tokens and sequences per forward pass (memory bound).
BATCH_TOKENS = 4096
MAX_BATCH = 64


@dataclass(frozen=True)
class Encoded:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(tokenizer: Any, context: str, continuation: str, add_bos: bool | None = None,
                specials_in_text: bool = False) -> Encoded:
    """Token ids of ``(context, continuation)`` as lm-evaluation-harness's HF backend makes them.

    Args:
        add_bos: whether the checkpoint's own tokenizer prepends BOS by default (what lm-eval sees
            when it loads the model folder; ``model.tokenizer_adds_bos``). The bridge's
            ``model.tokenizer`` always prepends it, so pass this for a model loaded through
            workbench; ``None`` uses ``tokenizer``'s current default.
        specials_in_text: special-token strings in the text (``<|im_start|>``, ``<s>``) are
            those tokens, as in a chat-rendered context (``split_special_tokens=False``; Meta's
            SentencePiece tokenizer otherwise encodes them as plain text).

    >>> enc = encode_pair(model.tokenizer, "Q: 2+2?\\nA:", " 4", add_bos=model.tokenizer_adds_bos)   # doctest: +SKIP
    """

    split = {"split_special_tokens": False} if specials_in_text else {}

    def tok(text: str, special: bool | None = None) -> list[int]:
        if special is None and add_bos is not None:
            ids = list(tokenizer(text, add_special_tokens=False, **split)["input_ids"])
            return [int(prefix)] + ids if add_bos and prefix is not None else ids
        kwargs = {} if special is None else {"add_special_tokens": special}
        return list(tokenizer(text, **kwargs, **split)["input_ids"])

    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if context == "":
        if prefix is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to score an empty context")
        cont = tok(continuation, special=False)
        if cont and cont[0] == prefix:  # the text itself starts with the prefix token
            return Encoded(tuple(cont[:1]), tuple(cont[1:]))
        return Encoded((int(prefix),), tuple(cont))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    # lm-eval adds no special tokens to a text that already starts with the BOS string.
    bos_text = tokenizer.decode([prefix]) if prefix is not None else None
    special = False if bos_text and context.startswith(bos_text) else None
    whole = tok(context + continuation, special)
    ctx = tok(context, special)
    return Encoded(tuple(ctx), tuple(whole[len(ctx):]))


def loglikelihood(
    model: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_tokens: int = BATCH_TOKENS,
    max_batch: int = MAX_BATCH,
    min_shared_context: int = MIN_SHARED_CONTEXT,
    min_saved_tokens: int = MIN_SAVED_TOKENS,
    row_tokens: int = ROW_TOKENS,
    progress: bool | Any = False,
    specials_in_text: bool = False,
) -> list[tuple[float, int]]:
    """Summed log-likelihood and token count of each ``(context, continuation)`` request.

    Args:
        model: a :class:`~workbench.models.hooked.HookedLlama` (anything callable on a ``[batch, pos]`` token
            tensor returning logits, with ``.tokenizer``).
        requests: ``(context, continuation)`` pairs.
        batch_tokens: padded tokens per forward pass (memory bound).
        max_batch: sequences per forward pass.
        min_shared_context: contexts of at least this many tokens that several requests
            share are run once and their KV cache reused, when that saves at least
            ``min_saved_tokens`` positions (``(n_requests - 1) * len(context)``); pass 1 and 0
            to always share.
        row_tokens: prefix-tree nodes per packed row for the other requests (see
            ``_score_plain``); 1 gives every distinct input a row of its own, positions
            0..n-1 (what a hook that indexes positions expects).
        progress: show a tqdm bar (``True``), or a callable ``advance(n)`` to report to.
        specials_in_text: contexts are chat-rendered: special-token strings in them are those
            tokens (see :func:`encode_pair`).

    Returns:
        ``[(loglik, n_continuation_tokens)]`` in the order of ``requests``.

    >>> loglikelihood(model, [("The capital of France is", " Paris")])   # doctest: +SKIP
    [(-2.31, 1)]
    """
    add_bos = getattr(model, "tokenizer_adds_bos", None)
    encoded = [encode_pair(model.tokenizer, c, x, add_bos=add_bos, specials_in_text=specials_in_text)
               for c, x in requests]
    for (context, _), enc in zip(requests, encoded, strict=True):
        if not enc.continuation:
            raise ValueError(f"empty continuation for context {context[-60:]!r}: nothing to score")
    results: list[tuple[float, int] | None] = [None] * len(encoded)
    advance = _progress(progress, len(encoded))

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, enc in enumerate(encoded):
        groups.setdefault(enc.context, []).append(i)
    # Options of one token each need no cache: their input is the context alone, which the
    # plain path runs once for all of them (identical inputs are deduplicated there).
    shared = {ctx: idx for ctx, idx in groups.items()
              if len(idx) > 1 and len(ctx) >= max(min_shared_context, 1)
              and (len(idx) - 1) * len(ctx) >= min_saved_tokens
              and any(len(encoded[i].continuation) > 1 for i in idx)}
    plain = [i for ctx, idx in groups.items() if ctx not in shared for i in idx]

    with torch.no_grad(), _fused_attention(model):
        # Few-shot suites repeat one long primer in every context (TruthfulQA's 6-shot QA):
        # the primer's KV cache is computed once and each context continues from it.
        base = _common_prefix(list(shared), min_saved_tokens)
        base_cache = _prefill(model, base)[1] if base else None
        for ctx, idx in shared.items():
            _score_shared(model, ctx, [encoded[i].continuation for i in idx], idx, results,
                          batch_tokens, max_batch, advance, base=len(base), base_cache=base_cache)
        _score_plain(model, encoded, plain, results, batch_tokens, max_batch, advance, row_tokens)
    advance(None)
    return [r for r in results if r is not None]


def _score_plain(model, encoded, order, results, batch_tokens, max_batch, advance,
                 row_tokens: int = ROW_TOKENS) -> None:
    """Score requests by running each distinct token prefix once (prefix-tree packing).

    A request's model input is ``context + continuation[:-1]``; each packed row holds the
    prefix tree of some inputs (see ``_pack_rows``): every token once, at the position
    (``position_ids``) of its depth, attending to its own ancestors only (a 4D attention
    mask). Each token's logits are those of the same token in its own unpacked sequence (to
    float rounding); a prefix shared by several requests (CrowS-Pairs' sentence pairs, the
    options of one question, or just a common first word) is computed once. Rows of about
    ``row_tokens`` go ``batch_tokens`` at a time into one forward through the bridge, so open
    hooks fire on every token (hooks see packed rows, not one request per row).
    """
    users: dict[tuple[int, ...], list[int]] = {}  # model input -> the requests reading its logits
    for i in order:
        users.setdefault(encoded[i].context + encoded[i].continuation[:-1], []).append(i)
    rows = _pack_rows(sorted(users), row_tokens)
    device = _device(model)
    pad = model.pad_token_id
    dtype = _float_dtype(model)
    for batch in _batches(rows, lambda r: len(r.tokens), batch_tokens, max_batch):
        width = max(len(r.tokens) for r in batch)
        tokens = torch.full((len(batch), width), pad, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)  # padding: itself only
        for b, row in enumerate(batch):
            n = len(row.tokens)
            tokens[b, :n] = torch.tensor(row.tokens)
            positions[b, :n] = torch.tensor(row.depth)
            for node, parent in enumerate(row.parent):
                if parent >= 0:
                    allowed[b, node, :node] = allowed[b, parent, :node]
        mask = torch.zeros((len(batch), 1, width, width), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        logits = model(tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device))
        done = 0
        for b, row in enumerate(batch):
            # once per row: requests sharing a prefix read the same nodes
            logprobs = F.log_softmax(logits[b, : len(row.tokens)].float(), dim=-1)
            for seq, path in zip(row.seqs, row.paths, strict=True):
                for i in users[seq]:
                    enc = encoded[i]
                    # logits at a node predict the next token: the context's last node onwards
                    nodes = torch.tensor(path[len(enc.context) - 1:], device=device)
                    target = torch.tensor(enc.continuation, device=device)
                    results[i] = (float(logprobs[nodes].gather(-1, target[:, None]).sum()), len(target))
                    done += 1
        advance(done)


@dataclass
class _PackedRow:
    """Prefix tree of some model inputs, flattened parent-first: ``tokens[j]`` sits at depth
    ``depth[j]`` under node ``parent[j]`` (-1: a root); ``paths[s]`` lists the nodes of
    ``seqs[s]``, one per token."""

    tokens: list[int]
    depth: list[int]
    parent: list[int]
    seqs: list[tuple[int, ...]]
    paths: list[list[int]]


def _pack_rows(inputs: list[tuple[int, ...]], row_tokens: int) -> list[_PackedRow]:
    """Pack lexicographically sorted ``inputs`` into prefix-tree rows of at most ``row_tokens``
    nodes (an input longer than that gets a row of its own).

    Inputs sharing their first two tokens (a sentence pair, the options of one question) form
    a tree first, split into pieces that fit; pieces then go into rows first-fit, largest first,
    so rows end up nearly full (little padding in a batch), and each row's tree is rebuilt over
    all its inputs so they share any prefix at all (the BOS token, at least)."""
    pieces = [piece for _, run in itertools.groupby(inputs, key=lambda seq: seq[:2])
              for piece in _fill_rows(list(run), row_tokens)]
    bins: list[tuple[int, list[tuple[int, ...]]]] = []  # (nodes, inputs); merged trees are no larger
    for piece in sorted(pieces, key=lambda piece: -len(piece.tokens)):
        for i, (nodes, seqs) in enumerate(bins):
            if nodes + len(piece.tokens) <= row_tokens:
                bins[i] = (nodes + len(piece.tokens), seqs + piece.seqs)
                break
        else:
            bins.append((len(piece.tokens), list(piece.seqs)))
    return [_fill_rows(sorted(seqs), row_tokens=max(row_tokens, nodes))[0] for nodes, seqs in bins]


def _fill_rows(inputs: list[tuple[int, ...]], row_tokens: int) -> list[_PackedRow]:
    """Sorted ``inputs`` into consecutive rows of at most ``row_tokens`` nodes. In sorted order
    an input shares its longest prefix with the one just before it, so only its remaining
    tokens are new nodes."""
    rows: list[_PackedRow] = []
    row: _PackedRow | None = None
    for seq in inputs:
        shared = 0
        if row is not None:
            prev = row.seqs[-1]
            while shared < min(len(prev), len(seq)) and prev[shared] == seq[shared]:
                shared += 1
        if row is None or len(row.tokens) + len(seq) - shared > row_tokens:
            row = _PackedRow([], [], [], [], [])
            rows.append(row)
            shared = 0
        path = row.paths[-1][:shared] if shared else []
        for depth in range(shared, len(seq)):
            row.tokens.append(seq[depth])
            row.depth.append(depth)
            row.parent.append(path[-1] if path else -1)
            path.append(len(row.tokens) - 1)
        row.seqs.append(seq)
        row.paths.append(path)
    return rows


def _common_prefix(contexts: list[tuple[int, ...]], min_saved_tokens: int) -> tuple[int, ...]:
    """The token prefix all ``contexts`` share (leaving each at least one token of its own),
    when running it once saves at least ``min_saved_tokens`` positions; else ``()``."""
    if len(contexts) < 2:
        return ()
    n = min(len(c) for c in contexts) - 1
    first = contexts[0]
    for c in contexts[1:]:
        k = 0
        while k < n and c[k] == first[k]:
            k += 1
        n = k
    return tuple(first[:n]) if n > 0 and n * (len(contexts) - 1) >= max(min_saved_tokens, 1) else ()


def _prefill(model, tokens, past=None):
    """``(logits, cache)`` of a batch-of-one forward, continuing ``past`` if given."""
    ids = torch.tensor([list(tokens)], device=_device(model))
    if past is None:
        return model(ids, return_type="logits_and_cache")
    with warnings.catch_warnings():
        # transformers renames past_key_values to cache=; the bridge still takes the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        return model(ids, past_key_values=copy.deepcopy(past), return_type="logits_and_cache")


def _score_shared(model, ctx, continuations, idx, results, batch_tokens, max_batch, advance,
                  base: int = 0, base_cache=None) -> None:
    """One context, many continuations: run the context once, reuse its KV cache per option.

    With ``base_cache`` (the KV cache of ``ctx[:base]``), only ``ctx[base:]`` is run."""
    device = _device(model)
    logits, cache = _prefill(model, ctx[base:], base_cache) if base_cache is not None else _prefill(model, ctx)
    first = F.log_softmax(logits[0, -1].float(), dim=-1)  # predicts each option's first token
    order = sorted(range(len(idx)), key=lambda k: -len(continuations[k]))
    for batch in _batches(order, lambda k: len(ctx) + len(continuations[k]), batch_tokens, max_batch):
        totals = {k: float(first[continuations[k][0]]) for k in batch}
        longer = [k for k in batch if len(continuations[k]) > 1]
        if longer:
            feed = [list(continuations[k][:-1]) for k in longer]
            width = max(len(f) for f in feed)
            pad = model.pad_token_id
            tokens = torch.tensor([f + [pad] * (width - len(f)) for f in feed], device=device)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(longer))
            with warnings.catch_warnings():
                # transformers renames past_key_values to cache=; the bridge still takes the old name.
                warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
                out = model(tokens, past_key_values=past)
            logprobs = F.log_softmax(out.float(), dim=-1)
            for row, k in enumerate(longer):
                target = torch.tensor(continuations[k][1:], device=device)
                totals[k] += float(logprobs[row, : len(target)].gather(-1, target[:, None]).sum())
        for k in batch:
            results[idx[k]] = (totals[k], len(continuations[k]))
        advance(len(batch))


def _batches(order, length, batch_tokens, max_batch):
    """Consecutive slices of ``order`` whose padded size (count x longest) stays in budget."""
    batch: list[int] = []
    longest = 0
    for item in order:
        n = max(length(item), 1)
        if batch and (len(batch) + 1 > max_batch or max(longest, n) * (len(batch) + 1) > batch_tokens):
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, n)
    if batch:
        yield batch


def _fused_attention(model):
    """Fused SDPA attention while scoring (as lm-eval's Hugging Face model has it): logits only
    are read, so it changes them by float rounding only; a hook on the attention pattern or
    scores still gets the original path (``workbench.models.fast_attention``)."""
    bridge = getattr(model, "bridge", None)
    if bridge is None:
        return contextlib.nullcontext()
    from workbench.models.fast_attention import sdpa_while

    return sdpa_while(bridge)




def _float_dtype(model) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _device(model) -> torch.device:
    try:
        return model.device
    except AttributeError:
        return torch.device("cpu")


def _progress(progress, total):
    if callable(progress) and not isinstance(progress, bool):
        return lambda n: None if n is None else progress(n)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="log-likelihood", unit="req")
        return lambda n: bar.close() if n is None else bar.update(n)
    return lambda n: None
