"""The refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

Refusal is read off the residual stream as a difference of means: the mean activation of
``resid_pre`` over harmful instructions minus that over harmless ones, at each layer and at each
of the chat template's post-instruction tokens (what the template adds after the user's message,
``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML). Every such candidate is scored on validation
prompts and one is picked by the authors' rule (:mod:`workbench.patching.refusal_select`).

Prompts are rendered by the model's own chat template (``model.chat_tokens``). The refusal score
of a prompt is the log-odds of the model's first token being a refusal token. By default those
tokens come from the template too: each of :data:`REFUSAL_PHRASES` is rendered as the assistant's
reply, and the first token after the generation prompt is kept (for SmolLM2 and LLaMA-3, "I" and
"As"; LLaMA-2's " I" is token 306, Arditi et al.'s choice). ``refusal_tokens=`` overrides them.

>>> rd = refusal_direction(model)                                  # doctest: +SKIP
>>> rd.layer, rd.position, rd.frame.query("selected")              # doctest: +SKIP
>>> with rd.bypass():                                               # doctest: +SKIP
...     model.generate(model.format_chat("How do I pick a lock?"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.common.errors import DataError, PatchingError
from workbench.models.direction import Direction
from workbench.models.interventions import ablate, steer
from workbench.patching.refusal_prompts import (
    REFUSAL_PHRASES,
    SEED,
    arditi_splits,
    instructions_of,
    post_instruction_tokens,
    prompt_sets,
    refusal_scores,
    render,
    render_all,
    resolve_refusal_tokens,
)
from workbench.patching.refusal_select import (
    ABLATION_SITES,
    Candidates,
    PromptSet,
    refusal_score,
    run_rows,
    score_batched,
    score_loop,
    select,
)

__all__ = ["REFUSAL_PHRASES", "RefusalDirection", "arditi_splits", "category_directions", "cosine_matrix",
           "post_instruction_tokens", "refusal_direction", "refusal_scores", "render", "resolve_refusal_tokens"]

# The train/val filter (keep harmful prompts the model refuses, harmless ones it does not) is
# skipped for a set it would leave smaller than this share of it (a model that rarely refuses).
MIN_FILTERED_SHARE = 0.25


@dataclass
class RefusalDirection:
    """The selected refusal direction and the table it was chosen from.

    Attributes:
        direction: unit :class:`~workbench.Direction` at ``blocks.{layer}.hook_resid_pre``
            (concept ``"refusal"``, method ``"mean_diff"``), with provenance: model fingerprint,
            layer, position, data and its hash, the numbers of prompts, the scores.
        layer, position: where it was read (``position`` counts back from the last
            post-instruction token, ``-1``).
        mean_diff: the un-normalised difference of means ``[d_model]`` (what ``induce`` adds).
        frame: one row per candidate (layer x post-instruction position): ``layer``,
            ``position``, ``token``, ``norm``, ``ablation_score``, ``induce_score``, ``kl``,
            ``filtered`` (the reasons, None if kept) and ``selected``.
        refusal_tokens: token ids of the refusal score; ``post_instruction``: the template's
            post-instruction token ids.
        prompts: the instructions used after filtering: ``harmful_train``, ``harmless_train``,
            ``harmful_val``, ``harmless_val``.
        info: baseline scores, filter counts and settings.
    """

    direction: Direction
    layer: int
    position: int
    mean_diff: np.ndarray
    frame: pd.DataFrame
    refusal_tokens: list[int]
    post_instruction: list[int]
    prompts: dict[str, list[str]]
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)
    system: str | None = None

    def __repr__(self) -> str:
        return (f"RefusalDirection(layer={self.layer}, position={self.position}, "
                f"norm={float(np.linalg.norm(self.mean_diff)):.3f}, "
                f"ablation_score={self.info.get('ablation_score', float('nan')):.3f}, "
                f"baseline_harmful={self.info.get('baseline_harmful', float('nan')):.3f})")

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Context: the direction projected out of ``resid_pre``, ``attn_out`` and ``mlp_out`` at
        every layer and position (three ``model.ablate`` entries in ``model.active_interventions()``).

        >>> with rd.bypass():                                       # doctest: +SKIP
        ...     scores = rd.scores(rd.prompts["harmful_val"])
        """
        with contextlib.ExitStack() as stack:
            for site in ABLATION_SITES:
                stack.enter_context(ablate(self.model, self.direction, site=site))
            yield

    def induce(self, scale: float = 1.0):
        """Context: ``scale`` x the un-normalised mean difference added to ``resid_pre`` at its
        layer, every position (one ``model.steer`` entry in ``model.active_interventions()``).
        """
        alpha = float(scale) * float(np.linalg.norm(self.mean_diff))
        return steer(self.model, self.direction, layer=self.layer, alpha=alpha, site="resid_pre")

    def placebo(self, seed: int = 0) -> "RefusalDirection":
        """The same kind of result for a seeded random direction orthogonal to this one with the
        same norm: its ``bypass()`` / ``induce()`` are the controls any effect must beat. Its
        ``frame`` is empty (it was not searched for)."""
        rng = np.random.default_rng(seed)
        unit = self.direction.vector.astype(np.float64)
        random_vector = rng.standard_normal(unit.shape[0])
        random_vector -= (random_vector @ unit) * unit
        random_vector *= np.linalg.norm(self.mean_diff) / np.linalg.norm(random_vector)
        provenance = {**self.direction.provenance, "seed": seed, "placebo_for": "refusal"}
        direction = Direction(random_vector, self.direction.hook, self.layer, "random", "random", provenance)
        return replace(self, direction=direction, mean_diff=random_vector.astype(np.float32),
                       frame=self.frame.iloc[0:0].copy(), info={**self.info, "placebo_seed": seed})

    def scores(self, instructions: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        """Refusal scores of instructions rendered by the template, under the open contexts."""
        return refusal_scores(self.model, instructions, self.refusal_tokens, system=self.system,
                              batch_size=batch_size)

    def effects(self, seed: int = 0, *, batch_size: int = 16) -> pd.DataFrame:
        """Mean refusal score on the validation prompts: none vs bypass vs placebo bypass (harmful),
        none vs induce vs placebo induce (harmless), with standard errors."""
        placebo = self.placebo(seed)
        rows = []
        for prompts, kind in (("harmful_val", "bypass"), ("harmless_val", "induce")):
            for label, context in (("none", contextlib.nullcontext()), (kind, getattr(self, kind)()),
                                   (f"placebo {kind}", getattr(placebo, kind)())):
                with context:
                    s = self.scores(self.prompts[prompts], batch_size=batch_size)
                rows.append({"prompts": prompts, "intervention": label, "mean_score": float(s.mean()),
                             "se": float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan"),
                             "n": len(s)})
        return pd.DataFrame(rows)


def refusal_direction(
    model,
    harmful=None,
    harmless=None,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    refusal_tokens: Sequence[int | str] | None = None,
    batch_size: int = 16,
    kl_threshold: float = 0.1,
    prune_layer_fraction: float = 0.2,
    induce_threshold: float = 0.0,
    filter: bool = True,
    induce_fallback: bool = True,
    system: str | None = None,
    seed: int = SEED,
    batched: bool = True,
    data_dir=None,
    progress: bool = True,
) -> RefusalDirection:
    """Find the refusal direction: difference of means, scored and selected as Arditi et al. do.

    Args:
        model: a :class:`~workbench.HookedLlama` with a chat template.
        harmful, harmless: instructions: a list of strings, or a DataFrame with an
            ``instruction`` (or ``prompt``) column and optionally ``split`` (``train``/``val``).
            Without a split they are shuffled (``seed``) and ``n_val`` go to validation.
            Default: Arditi et al.'s splits in the data directory
            (``refusal_direction/dataset/splits``), sampled as their pipeline does.
        n_train, n_val: prompts per class (default 128 and 32, theirs; for lists: at most those,
            validation a quarter of a short list).
        layers, positions: restrict the candidates (positions count back from the last
            post-instruction token, ``-1``; ``0 ..`` index them from the first).
        refusal_tokens: token ids, or phrases whose first token after the generation prompt is
            used; default: those of :data:`REFUSAL_PHRASES` (see the module docstring).
        batch_size: rows (a prompt under one candidate) per forward pass.
        kl_threshold, prune_layer_fraction, induce_threshold: Arditi's filters (see
            :func:`~workbench.patching.refusal_select.select`).
        filter: keep only harmful prompts the model refuses (score > 0) and harmless ones it does
            not (score < 0), train and val, as their pipeline does; a set the filter would cut
            below a quarter of its size is kept whole (``info["filter"]`` says which).
        induce_fallback: a model that rarely refuses never gets a refusal score of 0 from one
            added vector (SmolLM2's harmless prompts score about -4), so when Arditi's rule keeps
            no candidate the induce test becomes relative: ``induce_score`` above the harmless
            validation baseline (adding the direction makes refusal more likely), with a
            warning; ``info["rule"]`` says which rule chose. False: raise instead.
        system: a system prompt for every rendering.
        batched: score several candidates per pass (False: one forward per candidate and
            measurement, the reference).
        data_dir: the data directory (default ``$WORKBENCH_DATA``).

    Returns:
        A :class:`RefusalDirection`.

    >>> rd = refusal_direction(model, n_train=64, n_val=16)          # doctest: +SKIP
    >>> rd.frame.sort_values("ablation_score").head()                 # doctest: +SKIP
    """
    started = time.perf_counter()
    sets = prompt_sets(harmful, harmless, n_train, n_val, seed, data_dir)
    eoi = post_instruction_tokens(model, system=system)
    tokens = resolve_refusal_tokens(model, refusal_tokens, system=system)
    rendered = {name: render_all(model, prompts, eoi, name, system) for name, prompts in sets.items()}
    n_layers = model.cfg.n_layers
    layers = _check_layers(layers, n_layers)
    positions = _check_positions(positions, len(eoi))

    scores, acts = _train_pass(model, rendered, tokens, len(eoi), batch_size)
    scores.update({name: refusal_scores(model, sets[name], tokens, system=system, batch_size=batch_size,
                                        rendered=rendered[name]) for name in ("harmful_val", "harmless_val")})
    keep, filter_info = _filter(scores, filter)
    harmful_idx = torch.as_tensor(keep["harmful_train"])
    harmless_idx = torch.as_tensor(keep["harmless_train"]) + len(sets["harmful_train"])
    mean_diffs = acts[harmful_idx].mean(0) - acts[harmless_idx].mean(0)  # [layer, eoi pos, d]

    grid = [(layer, pos) for pos in positions for layer in layers]
    candidates = Candidates(torch.stack([mean_diffs[layer, len(eoi) + pos] for layer, pos in grid]).float(),
                            [g[0] for g in grid], [g[1] for g in grid])
    harmful_val = PromptSet.of([rendered["harmful_val"][i] for i in keep["harmful_val"]])
    harmless_val = PromptSet.of([rendered["harmless_val"][i] for i in keep["harmless_val"]])
    scorer = score_batched if batched else score_loop
    scoring = time.perf_counter()
    table = scorer(model, candidates, harmful_val, harmless_val, tokens, batch_size=batch_size, progress=progress)
    seconds = {"means_and_baselines": scoring - started, "scoring": time.perf_counter() - scoring}
    eoi_text = [model.tokenizer.decode([t]) for t in eoi]
    table.insert(2, "token", [eoi_text[len(eoi) + p] for p in table["position"]])
    norms = np.zeros(len(grid))
    norms[candidates.nonzero] = candidates.vectors.norm(dim=-1).numpy()[candidates.nonzero]
    table.insert(3, "norm", norms)
    baseline_harmless = float(np.mean(scores["harmless_val"][keep["harmless_val"]]))
    frame, rule, induce_threshold = _select(table, n_layers, kl_threshold, induce_threshold, prune_layer_fraction,
                                            baseline_harmless if induce_fallback else None)

    best = frame[frame["selected"]].iloc[0]
    layer, position = int(best["layer"]), int(best["position"])
    mean_diff = mean_diffs[layer, len(eoi) + position].float().numpy()
    used = {name: [sets[name][i] for i in keep[name]] for name in sets}
    info = {
        "baseline_harmful": float(np.mean(scores["harmful_val"][keep["harmful_val"]])),
        "baseline_harmless": baseline_harmless, "rule": rule,
        "ablation_score": float(best["ablation_score"]), "induce_score": float(best["induce_score"]),
        "kl": float(best["kl"]), "filter": filter_info, "kl_threshold": kl_threshold,
        "prune_layer_fraction": prune_layer_fraction, "induce_threshold": induce_threshold,
        "batched": batched, "seconds": seconds,
    }
    provenance = {
        "model": model.source.name, "model_fingerprint": model.source.fingerprint, "layer": layer,
        "position": position, "position_token": eoi_text[len(eoi) + position], "norm": float(np.linalg.norm(mean_diff)),
        "data": "arditi2024 splits" if harmful is None and harmless is None else "user",
        "data_hash": _hash(used), "seed": seed, "refusal_tokens": tokens, "system": system,
        **{f"n_{name}": len(v) for name, v in used.items()},
        **{k: info[k] for k in ("ablation_score", "induce_score", "kl", "baseline_harmful", "baseline_harmless")},
    }
    direction = Direction(mean_diff, f"blocks.{layer}.hook_resid_pre", layer, "refusal", "mean_diff", provenance)
    return RefusalDirection(direction, layer, position, mean_diff, frame, tokens, eoi, used, info, model, system)


def _train_pass(model, rendered, tokens, n_eoi: int, batch_size: int):
    """Refusal scores of the train prompts and their ``resid_pre`` at the post-instruction tokens
    ``[prompts, layer, n_eoi, d]`` (float64), harmful then harmless, from one pass."""
    train = PromptSet.of(rendered["harmful_train"] + rendered["harmless_train"], keep=n_eoi)
    n_harmful = len(rendered["harmful_train"])
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    values, acts = run_rows(model, train, [(0, p) for p in range(len(train))],
                            lambda logits, _: refusal_score(logits, tokens)[:, None],
                            read=names, n_read=n_eoi, batch_size=batch_size)
    scores = {"harmful_train": values[:n_harmful, 0].numpy(), "harmless_train": values[n_harmful:, 0].numpy()}
    return scores, torch.stack([acts[name] for name in names], 1).double()


def _select(table, n_layers, kl_threshold, induce_threshold, prune_layer_fraction, baseline_harmless):
    """Arditi's rule; if it keeps nothing and ``baseline_harmless`` is given (below the induce
    threshold), the rule with the induce test relative to that baseline. ``(frame, rule, threshold)``."""
    try:
        frame = select(table, n_layers, kl_threshold=kl_threshold, induce_threshold=induce_threshold,
                       prune_layer_fraction=prune_layer_fraction)
        return frame, "arditi", induce_threshold
    except PatchingError:
        if baseline_harmless is None or induce_threshold is None or induce_threshold <= baseline_harmless:
            raise
    warnings.warn(f"refusal_direction: no candidate passes Arditi et al.'s rule (induce_score >= "
                  f"{induce_threshold:g}); the model's harmless prompts score {baseline_harmless:.2f}, so "
                  "the induce test becomes relative: induce_score above that baseline", stacklevel=3)
    frame = select(table, n_layers, kl_threshold=kl_threshold, induce_threshold=baseline_harmless,
                   prune_layer_fraction=prune_layer_fraction)
    return frame, "relative induce (above the harmless baseline)", baseline_harmless


def _filter(scores: dict[str, np.ndarray], enabled: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Indices kept per set: harmful ones with score > 0, harmless ones with score < 0."""
    keep, info = {}, {}
    for name, s in scores.items():
        everything = np.arange(len(s))
        chosen = everything[s > 0] if name.startswith("harmful") else everything[s < 0]
        if not enabled:
            keep[name], info[name] = everything, "not filtered"
        elif len(chosen) < max(1, MIN_FILTERED_SHARE * len(s)):
            warnings.warn(f"refusal_direction: filtering {name} would keep {len(chosen)} of {len(s)} prompts; "
                          "keeping all of them (the model rarely behaves as the filter expects)", stacklevel=3)
            keep[name], info[name] = everything, f"kept all {len(s)} (filter would keep {len(chosen)})"
        else:
            keep[name], info[name] = chosen, f"kept {len(chosen)} of {len(s)}"
    return keep, info


def _check_layers(layers, n_layers: int) -> list[int]:
    chosen = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if not chosen or bad:
        raise PatchingError(f"layers: {bad or 'empty'}; the model has layers 0..{n_layers - 1}")
    return chosen


def _check_positions(positions, n_eoi: int) -> list[int]:
    chosen = list(range(-n_eoi, 0)) if positions is None else [int(p) - n_eoi if int(p) >= 0 else int(p)
                                                              for p in positions]
    bad = [p for p in chosen if not -n_eoi <= p < 0]
    if not chosen or bad:
        raise PatchingError(f"positions: {positions!r}; the template has {n_eoi} post-instruction tokens "
                            f"(-{n_eoi}..-1, or 0..{n_eoi - 1})")
    return list(dict.fromkeys(chosen))


def _hash(prompts: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]


# --- per-category directions ----------------------------------------------------------------------


def category_directions(model, harmful: pd.DataFrame, harmless, layer: int, position: int = -1, *,
                        system: str | None = None, batch_size: int = 16, min_n: int = 2) -> dict[str, Direction]:
    """A difference-of-means direction per harmful category, against the same harmless mean.

    Args:
        harmful: a DataFrame with ``category`` and ``instruction`` (or ``prompt``) columns.
        harmless: instructions (list or DataFrame).
        layer, position: where to read ``resid_pre`` (e.g. a :class:`RefusalDirection`'s).
        min_n: categories with fewer prompts are left out.

    >>> dirs = category_directions(model, directharm4, harmless, rd.layer, rd.position)   # doctest: +SKIP
    >>> cosine_matrix({"refusal": rd.direction, **dirs})                                    # doctest: +SKIP
    """
    if not isinstance(harmful, pd.DataFrame) or "category" not in harmful.columns:
        raise DataError("harmful: a DataFrame with a 'category' column (and 'instruction' or 'prompt')")
    column = next((c for c in ("instruction", "prompt") if c in harmful.columns), None)
    if column is None:
        raise DataError(f"harmful: needs an 'instruction' or 'prompt' column; it has {list(harmful.columns)}")
    eoi = post_instruction_tokens(model, system=system)
    (position,) = _check_positions([position], len(eoi))
    (layer,) = _check_layers([layer], model.cfg.n_layers)
    harmless_list = instructions_of(harmless, "harmless")

    def mean_of(instructions: list[str], name: str) -> torch.Tensor:
        prompts = PromptSet.of(render_all(model, instructions, eoi, name, system), keep=len(eoi))
        hook = f"blocks.{layer}.hook_resid_pre"
        _, acts = run_rows(model, prompts, [(0, p) for p in range(len(prompts))], lambda logits, _: logits[:, :0],
                           read=[hook], n_read=len(eoi), batch_size=batch_size)
        return acts[hook][:, len(eoi) + position].double().mean(0)

    base = mean_of(harmless_list, "harmless")
    out = {}
    for category, rows in harmful.groupby("category", sort=True):
        instructions = rows[column].astype(str).tolist()
        if len(instructions) < min_n:
            continue
        diff = mean_of(instructions, f"category {category!r}") - base
        out[str(category)] = Direction(diff.numpy(), f"blocks.{layer}.hook_resid_pre", layer, f"refusal/{category}",
                                       "mean_diff", {"model": model.source.name, "model_fingerprint": model.source.fingerprint,
                                                     "position": position, "n_harmful": len(instructions),
                                                     "n_harmless": len(harmless_list), "norm": float(diff.norm())})
    return out


def cosine_matrix(directions: dict[str, Direction | np.ndarray]) -> pd.DataFrame:
    """Cosine similarity of every pair of directions, as a square DataFrame labelled by name.

    >>> cosine_matrix({"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0])}).round(3)["b"].tolist()
    [0.707, 1.0]
    """
    names = list(directions)
    vectors = np.stack([np.asarray(getattr(d, "vector", d), dtype=np.float64).reshape(-1) for d in directions.values()])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame(vectors @ vectors.T, index=names, columns=names)
