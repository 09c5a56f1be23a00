"""``feature_contrasts``: the SAE latents whose activations differ most between paired texts.

A contrast is a pair of texts that differ in one respect: CrowS-Pairs' more and less
stereotyped sentences, a TruthfulQA question with a true and with a false answer, a harmful and
a harmless request. Each text's latents are reduced over its tokens to one number per latent
(mean over the non-BOS tokens, max, or the last token), and for every latent the two texts of a
pair are compared on the same pair:

- ``diff``: the mean paired difference ``a - b``, with a paired percentile bootstrap interval
  (the same resamples as :func:`~workbench.common.stats.bootstrap_ci`, drawn once for all latents);
- ``p_value``: the two-sided sign-flip permutation test of the mean difference
  (:func:`~workbench.common.stats.sign_flip_test`), vectorised across latents: exact (every sign
  pattern) for a latent with at most ``EXACT_MAX`` nonzero differences, where it equals
  ``sign_flip_test`` exactly; else Monte Carlo with one seeded set of sign patterns shared by all
  latents (the same test as ``sign_flip_test``'s and, for a latent without zero differences, the
  same patterns and the same p-value);
- ``p_adjusted``: Benjamini-Hochberg over every latent that differs on at least one pair. A latent
  whose differences are all zero (one that fires on neither text of any pair) cannot be tested:
  its p-values are NaN and it is left out of the family. Which latents are left out depends
  only on the ``|a - b|`` values, which sign flips do not change, so BH stays valid;
- ``fires_a`` / ``fires_b``: the fraction of pairs on which the latent fires (reduced activation
  > 0), with McNemar's exact test of the paired firing (``p_fires``, and ``p_fires_adjusted``
  over the latents with a discordant pair).

Steering a latent found here needs no helper of its own: its decoder row is a direction,
``wb.dose_response(model, sae.W_dec[f].detach(), layer=..., eval=...)`` (beside its placebo).

>>> table = wb.feature_contrasts(model, sae, crows_pairs_contrasts(frame, limit=200))  # doctest: +SKIP
>>> table[["feature", "diff", "ci_low", "ci_high", "p_adjusted"]].head()               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import binom
from tqdm.auto import tqdm

from workbench.common.stats import EXACT_MAX, N_PERMUTATIONS, benjamini_hochberg
from workbench.features.formats import check_fits

REDUCTIONS = ("mean", "max", "last")
SORTS = ("abs_diff", "p_value")
COLUMNS = ["feature", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "p_adjusted", "exact",
           "fires_a", "fires_b", "p_fires", "p_fires_adjusted", "n_pairs"]
DEFAULT_QA = "Q: {question}\nA: {answer}"  # TruthfulQA's QA prompt format (Lin et al. 2022, "QA" prompt)
_BLOCK = 8_000_000  # entries per intermediate [patterns, latents] product: bounds memory


def feature_contrasts(model, sae, pairs: Sequence[tuple[Any, Any]], *, reduce: str = "mean", positions=None,
                      top: int | None = 20, sort: str = "abs_diff", n_boot: int = 1000,
                      n_permutations: int = N_PERMUTATIONS, seed: int = 0, batch_size: int = 8,
                      progress: bool = True) -> pd.DataFrame:
    """Per latent: how its activation differs between the two texts of each pair, with paired tests.

    Args:
        model: a :class:`~workbench.HookedLlama`.
        sae: a :class:`~workbench.features.SparseAutoencoder` (or anything with ``encode``, ``hook``
            and ``d_sae``); its latents are ``sae.encode`` of the activations at ``sae.hook``.
        pairs: ``(text_a, text_b)`` contrasts; a text is a string (tokenized with BOS) or a
            conversation (a list of ``{"role", "content"}`` messages, rendered with the model's chat
            template and an open assistant turn, as ``model.to_tokens`` renders them).
        reduce: how a text's tokens become one value per latent: ``"mean"`` (over ``positions``),
            ``"max"`` (over ``positions``) or ``"last"`` (the last token).
        positions: which tokens count, as indices into each text's tokens after BOS (negative
            from the end: ``range(-5, 0)`` is a chat template's last five tokens); default all.
        top: rows returned (the first ``top`` in ``sort`` order); ``None`` returns every latent.
        sort: ``"abs_diff"`` (largest ``|diff|`` first) or ``"p_value"`` (smallest first).
        n_boot: bootstrap resamples of the interval; n_permutations: Monte-Carlo sign patterns.
        seed: seeds the bootstrap and the sign patterns.
        batch_size: texts per forward pass.

    Returns:
        A DataFrame, one row per latent, with the columns of :data:`COLUMNS` (see the module
        docstring); ``attrs`` records ``reduce``, ``positions``, ``hook``, ``n_pairs``, ``n_tested``
        (the BH family's size), ``n_permutations`` and ``seed``.

    >>> pairs = [("the nurse said she", "the nurse said he"), ...]                   # doctest: +SKIP
    >>> wb.feature_contrasts(model, sae, pairs, top=10)                              # doctest: +SKIP
    """
    acts_a, acts_b = pair_activations(model, sae, pairs, reduce=reduce, positions=positions,
                                      batch_size=batch_size, progress=progress)
    table = contrast_table(acts_a, acts_b, top=top, sort=sort, n_boot=n_boot, n_permutations=n_permutations,
                           seed=seed)
    table.attrs.update(reduce=reduce, positions=None if positions is None else _describe(positions),
                       hook=getattr(sae, "hook", None))
    return table


@torch.no_grad()
def pair_activations(model, sae, pairs: Sequence[tuple[Any, Any]], *, reduce: str = "mean", positions=None,
                     batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The reduced latents of each pair's two texts: ``(acts_a, acts_b)``, each ``[n_pairs, d_sae]``.

    Arguments as in :func:`feature_contrasts`.

    >>> a, b = pair_activations(model, sae, [("the cat", "the dog")])                # doctest: +SKIP
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; use one of {REDUCTIONS}")
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError("pairs: expected a non-empty list of (text_a, text_b)")
    check_fits(sae, model)
    texts = [t for p in pairs for t in p]  # a0, b0, a1, b1, ...
    rows = [_tokens(model, t) for t in texts]
    bos, pad = model.tokenizer.bos_token_id, model.pad_token_id
    out = np.empty((len(texts), sae.d_sae))
    bar = tqdm(total=len(texts), desc="feature contrasts", disable=not progress)
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            lengths = [len(r) for r in batch]
            tokens = torch.full((len(batch), max(lengths)), pad, dtype=torch.long)
            for i, r in enumerate(batch):
                tokens[i, : len(r)] = r  # right padding: no real token attends to a pad
            _, cache = model.run_with_cache(tokens.to(model.device), names_filter=[sae.hook])
            x = cache[sae.hook]
            weight = getattr(sae, "W_enc", None)
            if weight is not None:
                x = x.to(weight.device, weight.dtype)
            z = sae.encode(x)  # [batch, pos, d_sae]
            for i, r in enumerate(batch):
                first = 1 if bos is not None and int(r[0]) == bos else 0
                chosen = _positions(lengths[i] - first, reduce, positions, start + i, texts) + first
                values = z[i, chosen].double()
                out[start + i] = (values.max(0).values if reduce == "max" else values.mean(0)).cpu().numpy()
            bar.update(len(batch))
    finally:
        bar.close()
    return out[0::2], out[1::2]


def contrast_table(acts_a: np.ndarray, acts_b: np.ndarray, *, top: int | None = None, sort: str = "abs_diff",
                   n_boot: int = 1000, n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> pd.DataFrame:
    """The paired statistics of :func:`feature_contrasts` from per-pair values ``[n_pairs, n_features]``.

    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((12, 3)); b = a.copy(); b[:, 1] -= 1
    >>> int(contrast_table(a, b, top=1)["feature"].iloc[0])
    1
    """
    if sort not in SORTS:
        raise ValueError(f"sort={sort!r}; use one of {SORTS}")
    a, b = np.asarray(acts_a, float), np.asarray(acts_b, float)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"acts_a and acts_b must be [n_pairs, n_features] of one shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    d = a - b
    p, exact = sign_flip_columns(d, seed=seed, n_permutations=n_permutations)
    tested = (d != 0).any(0)
    p[~tested] = np.nan
    fa, fb = a > 0, b > 0
    p_fires = mcnemar_columns((fa & ~fb).sum(0), (~fa & fb).sum(0))
    p_fires[(fa == fb).all(0)] = np.nan  # no discordant pair: nothing to test
    table = pd.DataFrame({
        "feature": np.arange(a.shape[1]), "mean_a": a.mean(0), "mean_b": b.mean(0), "diff": d.mean(0),
        "p_value": p, "p_adjusted": benjamini_hochberg(p), "exact": exact & tested,
        "fires_a": fa.mean(0), "fires_b": fb.mean(0), "p_fires": p_fires,
        "p_fires_adjusted": benjamini_hochberg(p_fires), "n_pairs": n,
    })
    if sort == "abs_diff":
        order = np.lexsort((table["feature"], -table["diff"].abs()))
    else:
        order = np.lexsort((table["feature"], -table["diff"].abs(), table["p_value"].fillna(np.inf)))
    table = table.iloc[order[: top if top is not None else None]].reset_index(drop=True)
    # Intervals only for the rows returned: the same resamples for each, so cheap as a product.
    low, high = bootstrap_mean_ci(d[:, table["feature"].to_numpy()], n_boot=n_boot, seed=seed)
    table.insert(4, "ci_low", low)
    table.insert(5, "ci_high", high)
    table.attrs.update(n_pairs=n, n_tested=int(tested.sum()), n_permutations=int(n_permutations), seed=seed,
                       sort=sort)
    return table[COLUMNS]


def sign_flip_columns(diffs: np.ndarray, *, seed: int = 0, n_permutations: int = N_PERMUTATIONS,
                      exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~workbench.common.stats.sign_flip_test` of each column of ``diffs [n, F]``: ``(p, exact)``.

    Columns with at most ``exact_max`` nonzero differences are enumerated exactly (grouped by that
    count, so the patterns are built once per count); the rest share one seeded set of
    Monte-Carlo patterns over all ``n`` rows (a zero difference adds nothing whatever its sign), drawn
    in the chunks ``sign_flip_test`` draws, so a column without zeros gets its p-value exactly.

    >>> sign_flip_columns(np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]]))[0].tolist()
    [0.25, 1.0]
    """
    d = np.asarray(diffs, float)
    n, n_cols = d.shape
    m = (d != 0).sum(0)
    p, exact = np.ones(n_cols), m <= exact_max
    observed = np.abs(d.sum(0))
    tol = 1e-9 * np.abs(d).sum(0)  # sums equal in exact arithmetic count as ties
    for k in np.unique(m[(m > 0) & exact]):
        cols = np.flatnonzero(m == k)
        # the k nonzero differences of each column, in row order: [k, len(cols)]
        keep = np.argsort(d[:, cols] == 0, axis=0, kind="stable")[:k]
        values = np.take_along_axis(d[:, cols], keep, 0)
        signs = (1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)).astype(float)  # [2^k, k]
        step = max(1, _BLOCK // 2**k)
        for c in range(0, len(cols), step):
            block = cols[c : c + step]
            sums = np.abs(signs @ values[:, c : c + step])
            p[block] = np.mean(sums >= observed[block] - tol[block], axis=0)
    cols = np.flatnonzero(~exact)
    if cols.size:
        rng = np.random.default_rng(seed)
        hits, done, chunk = np.zeros(cols.size), 0, max(1, 2_000_000 // n)
        while done < n_permutations:
            size = min(chunk, n_permutations - done)
            signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
            step = max(1, _BLOCK // size)
            for c in range(0, cols.size, step):
                block = cols[c : c + step]
                hits[c : c + step] += np.sum(np.abs(signs @ d[:, block]) >= observed[block] - tol[block], axis=0)
            done += size
        p[cols] = (hits + 1) / (n_permutations + 1)
    return p, exact


def mcnemar_columns(to_a: np.ndarray, to_b: np.ndarray) -> np.ndarray:
    """:func:`~workbench.common.stats.mcnemar_exact` of each pair of discordant counts.

    The exact two-sided binomial test at 1/2 is symmetric: ``min(1, 2 P(X <= min(b, c)))``.

    >>> mcnemar_columns(np.array([0, 3]), np.array([6, 3])).round(4).tolist()
    [0.0312, 1.0]
    """
    to_a, to_b = np.asarray(to_a), np.asarray(to_b)
    changed = to_a + to_b
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(to_a, to_b), changed, 0.5))
    return np.where(changed == 0, 1.0, p)


def bootstrap_mean_ci(diffs: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~workbench.common.stats.bootstrap_ci` of ``np.mean`` for each column of ``diffs [n, F]``.

    The resamples are the ones ``bootstrap_ci`` draws with this seed; each is a row of counts, so
    every column's resampled means are one product ``[n_boot, n] @ [n, F]``.
    """
    d = np.asarray(diffs, float)
    n = d.shape[0]
    if n < 2:
        return np.full(d.shape[1], np.nan), np.full(d.shape[1], np.nan)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)
    means = counts @ d / n  # [n_boot, F]
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return low, high


# --- building pairs from loaded rows ----------------------------------------------------------------


def contrasts_from_frame(frame: pd.DataFrame, a_col: str, b_col: str, *, limit: int | None = None,
                         seed: int = 0, chat: bool = False, system: str | None = None) -> list[tuple[Any, Any]]:
    """``(row[a_col], row[b_col])`` per row (a seeded sample of ``limit`` rows, in file order).

    ``chat=True`` makes each text one user message (rendered with the chat template).

    >>> contrasts_from_frame(pd.DataFrame({"x": ["a", "b"], "y": ["c", "d"]}), "x", "y")
    [('a', 'c'), ('b', 'd')]
    """
    missing = [c for c in (a_col, b_col) if c not in frame.columns]
    if missing:
        raise KeyError(f"contrasts_from_frame: no column(s) {missing}; the frame has {list(frame.columns)}")
    rows = _sample(frame, limit, seed)
    wrap = (lambda t: _conversation(t, system)) if chat else (lambda t: t)
    return [(wrap(a), wrap(b)) for a, b in zip(rows[a_col], rows[b_col], strict=True)]


def crows_pairs_contrasts(frame: pd.DataFrame, *, limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """CrowS-Pairs: (more stereotyped, less stereotyped) sentence per row.

    ``frame`` is the CrowS-Pairs loader's table (``sent_more``, ``sent_less``), e.g.::

        from workbench.evals.data import RowPolicy, find_files
        from workbench.evals.loaders import load_crows_pairs
        root = resolve_data_dir(None, needed_by="crows_pairs")
        frame = load_crows_pairs(find_files(root, "crows_pairs", ["crows_pairs/*.csv"]), RowPolicy())
    """
    return contrasts_from_frame(frame, "sent_more", "sent_less", limit=limit, seed=seed)


def truthfulqa_contrasts(frame: pd.DataFrame, *, targets: str = "mc1", template: str = DEFAULT_QA,
                         limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """TruthfulQA: (question + a true answer, question + a false answer) per question.

    The true answer is the first labelled 1, the false one a seeded choice among those labelled 0.
    ``frame`` is the TruthfulQA MC loader's table (``question``, ``mc1_choices``, ``mc1_labels`` ...):
    ``load_truthfulqa_mc(find_files(root, "truthfulqa", ["truthfulqa/mc_task.json"]), RowPolicy())``.
    """
    if targets not in ("mc1", "mc2"):
        raise ValueError(f"targets={targets!r}; use 'mc1' or 'mc2'")
    rng = np.random.default_rng(seed)
    out = []
    for _, row in _sample(frame, limit, seed).iterrows():
        choices, labels = list(row[f"{targets}_choices"]), list(row[f"{targets}_labels"])
        true = [c for c, v in zip(choices, labels, strict=True) if v == 1]
        false = [c for c, v in zip(choices, labels, strict=True) if v == 0]
        if not true or not false:
            continue
        pick = false[int(rng.integers(len(false)))]
        out.append((template.format(question=row["question"], answer=true[0]),
                    template.format(question=row["question"], answer=pick)))
    return out


def refusal_contrasts(harmful, harmless=None, *, limit: int | None = None, seed: int = 0, chat: bool = True,
                      system: str | None = None) -> list[tuple[Any, Any]]:
    """Harmful vs harmless requests, each one user message of a conversation (``chat=True``).

    Either two lists of instructions (Arditi et al.'s splits: ``harmful_train`` / ``harmless_train``
    of ``workbench.patching.refusal_prompts.arditi_splits()``), paired after a seeded shuffle of
    each; or one misuse table (``workbench.evals.misuse.load_sources``: ``prompt``, ``expected``,
    ``pair``) whose harmful requests (``expected == "refuse"``) are paired with their benign twins
    (``expected == "answer"``, the same ``pair``, as in JailbreakBench).
    """
    if isinstance(harmful, pd.DataFrame):
        rows = harmful[harmful["pair"].astype(str) != ""]
        bad = rows[rows["expected"] == "refuse"].drop_duplicates("pair").set_index("pair")["prompt"]
        good = rows[rows["expected"] == "answer"].drop_duplicates("pair").set_index("pair")["prompt"]
        both = [k for k in bad.index if k in good.index]
        if not both:
            raise ValueError("refusal_contrasts: no harmful request has a benign twin (same 'pair')")
        pairs = pd.DataFrame({"a": bad[both].to_numpy(), "b": good[both].to_numpy()})
    else:
        if harmless is None:
            raise ValueError("refusal_contrasts: pass harmless= with a list of harmful instructions")
        rng = np.random.default_rng(seed)
        a, b = list(harmful), list(harmless)
        n = min(len(a), len(b))
        pairs = pd.DataFrame({"a": [a[i] for i in rng.permutation(len(a))[:n]],
                              "b": [b[i] for i in rng.permutation(len(b))[:n]]})
    return contrasts_from_frame(pairs, "a", "b", limit=limit, seed=seed, chat=chat, system=system)


# --- helpers ----------------------------------------------------------------------------------------


def _tokens(model, text: Any) -> torch.Tensor:
    if isinstance(text, str):
        return model.to_tokens(text)[0].cpu()
    return model.to_tokens(list(text), move_to_device=False)[0].cpu()  # a conversation


def _positions(n_tokens: int, reduce: str, positions, index: int, texts) -> torch.Tensor:
    """Indices (after BOS) of the tokens a text's value is reduced over."""
    where = f"text {index // 2} {'ab'[index % 2]} ({str(texts[index])[:50]!r})"
    if n_tokens <= 0:
        raise ValueError(f"{where} has no tokens besides BOS")
    chosen = np.arange(n_tokens)
    if positions is not None:
        wanted = np.atleast_1d(np.asarray(list(positions) if isinstance(positions, range) else positions))
        if isinstance(positions, slice):
            chosen = chosen[positions]
        else:
            if wanted.size and (wanted.max() >= n_tokens or wanted.min() < -n_tokens):
                raise ValueError(f"{where}: positions {wanted.tolist()} out of range for {n_tokens} tokens")
            chosen = chosen[wanted.astype(int)]
        if chosen.size == 0:
            raise ValueError(f"{where}: positions select no token")
    if reduce == "last":
        chosen = chosen[-1:]
    return torch.as_tensor(chosen)


def _describe(positions) -> Any:
    if isinstance(positions, slice):
        return f"slice({positions.start}, {positions.stop}, {positions.step})"
    return [int(p) for p in np.atleast_1d(np.asarray(list(positions) if isinstance(positions, range) else positions))]


def _sample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or limit >= len(frame):
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=int(limit), replace=False))
    return frame.iloc[keep]


def _conversation(text: Any, system: str | None) -> Any:
    if not isinstance(text, str):
        return text  # already a conversation
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": text}]
