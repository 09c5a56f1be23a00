"""Activation patching sweeps: which activations carry the behaviour from one prompt to another?

``patch_sweep`` runs a *clean* and a *corrupted* prompt, copies one activation (a layer and a
position, or a layer and a head) from one run into the other, and records a metric for every
such cell. Denoising (the default, as in TransformerLens's ``get_act_patch_*``) runs the
corrupted prompt and patches in the clean activation; noising runs the clean prompt and patches
in the corrupted one.

It computes the same numbers as TransformerLens's patching functions, faster:

- many cells share one forward pass: each cell is a copy of the prompts in the batch dimension,
  and a single hook patches each copy at its own position / head;
- blocks before the patched layer are not recomputed: their outputs are those of the unpatched
  run, recorded once (:class:`~workbench.patching.runs.RecordedRun`), and the batch starts at
  the patched block;
- for the position-resolved sites (all but ``head_out``), positions before the patched one are
  not recomputed either: attention is causal, so a patch at position ``p`` cannot reach them.
  Cells are batched in order of position: a pass runs positions ``p ..`` only (``p`` its
  first cell's), each cell's rows joining the batch at its own layer, and every block attends
  to the recorded run's keys and values for positions ``< p``
  (:meth:`~workbench.patching.runs.RecordedRun.resume_suffix`). About half the work of the
  full-length pass; the values are those of a full forward, to float rounding.

Hooks already attached to the model when the sweep starts (a steering vector, an ablation) act
on every patched run, as in TransformerLens's functions. They would see only positions ``p ..``
in a prefix-reusing pass, so while any is attached the sweep takes the full-length path, where
each row is a whole prompt; ``reuse_prefix=False`` asks for that path always (a check).
"""

from __future__ import annotations

import itertools
import numbers
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.common.errors import PatchingError
from workbench.models.chat import is_conversation
from workbench.models.sites import Site, get_site
from workbench.patching.metrics import Metric, evaluate_metric
from workbench.patching.result import MODES, PatchResult
from workbench.patching.runs import RecordedRun

# Logits dominate the memory of a batched run: keep one chunk's logits under this many bytes.
_LOGITS_BUDGET_BYTES = 256 * 2**20


def patch_sweep(
    model,
    clean,
    corrupt,
    metric: Metric,
    site: str = "resid_pre",
    *,
    mode: str = "denoise",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    reuse_prefix: bool = True,
) -> PatchResult:
    """Patch every (layer, position) or (layer, head) cell of a site and record the metric.

    Args:
        model: a :class:`~workbench.HookedLlama`.
        clean, corrupt: a prompt, a list of prompts (pairs by index) or ``[batch, pos]`` tokens;
            a prompt may be a conversation (``[{"role": "user", "content": ...}]``), rendered with
            the model's chat template. All prompts must have the same number of tokens (see
            :func:`token_alignment`).
        metric: logits ``[batch, pos, d_vocab]`` -> one number (see ``logit_diff``).
        site: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``
            (layer x position), ``head_out`` (layer x head, all positions) or ``head_out_by_pos``.
        mode: ``"denoise"`` (run corrupted, patch in clean) or ``"noise"`` (the reverse).
        layers, positions, heads: restrict the sweep (default: all).
        batch_size: patched cells per forward pass (default: as many as fit a 256 MiB logits budget).
        progress: show a progress bar.
        reuse_prefix: for position-resolved sites, run only the positions from the patched one
            on, with the unpatched run's keys/values before it (see the module docstring).
            ``False``, or a hook attached to the model, or ``site="head_out"`` (a head patched
            at every position): every cell runs all positions.

    Returns:
        A :class:`PatchResult`.

    >>> metric = wb.logit_diff(model, " Mary", " John")                              # doctest: +SKIP
    >>> res = wb.patch_sweep(model, clean, corrupt, metric, site="resid_pre")       # doctest: +SKIP
    >>> res.values.shape                                                             # doctest: +SKIP
    torch.Size([30, 15])
    """
    site_info = get_site(site)
    if mode not in MODES:
        raise PatchingError(f"mode={mode!r}; use one of {MODES}")
    clean_tokens, corrupt_tokens = paired_tokens(model, clean, corrupt)
    n_prompts, n_pos = clean_tokens.shape
    for argument, value, axis in (("positions", positions, "pos"), ("heads", heads, "head")):
        if value is not None and axis not in site_info.axes:
            raise PatchingError(f"{argument}= does not apply to site {site!r} (its axes: layer, {', '.join(site_info.axes)})")
    layers = _check_indices("layers", layers, model.cfg.n_layers)
    positions = _check_indices("positions", positions, n_pos)
    heads = _check_indices("heads", heads, model.cfg.n_heads)

    hooks = [site_info.hook_name(layer) for layer in layers]
    clean_run = RecordedRun(model, clean_tokens, hooks)
    corrupt_run = RecordedRun(model, corrupt_tokens, hooks)
    base, source = (corrupt_run, clean_run) if mode == "denoise" else (clean_run, corrupt_run)
    clean_value = evaluate_metric(metric, clean_run.logits)
    corrupt_value = evaluate_metric(metric, corrupt_run.logits)

    cells = _cells(site_info, positions, heads)  # per layer: one index tuple per cell
    if batch_size is None:
        per_cell = n_prompts * n_pos * model.cfg.d_vocab * 4
        batch_size = max(1, min(256, _LOGITS_BUDGET_BYTES // per_cell))
    raw = torch.empty(len(layers), len(cells))
    bar = tqdm(total=len(layers) * len(cells), desc=f"patching {site}", disable=not progress, unit="cell")
    # Decided before any hook of ours is attached: a user's hook must see whole prompts.
    suffix = reuse_prefix and "pos" in site_info.axes and model.active_hook_count() == 0 and base.can_resume_suffix
    try:
        if suffix:
            _sweep_suffixes(model, site_info, layers, cells, base, source, metric, batch_size, raw, bar)
        else:
            _sweep_full(model, site_info, layers, cells, base, source, metric, batch_size, raw, bar)
    finally:
        bar.close()

    shape = [len(layers)] + [len(positions) if a == "pos" else len(heads) for a in site_info.axes]
    return PatchResult.from_raw(model, raw.reshape(shape), site=site_info, mode=mode, method="exact", metric=metric,
                                clean_value=clean_value, corrupt_value=corrupt_value, clean_tokens=clean_tokens,
                                corrupt_tokens=corrupt_tokens, layers=layers, positions=positions, heads=heads)


def _sweep_full(model, site_info, layers, cells, base, source, metric, batch_size, raw, bar) -> None:
    """Each layer's cells in batches of copies of the prompts, all positions, from that layer on."""
    n_prompts = base.batch
    for li, layer in enumerate(layers):
        hook = site_info.hook_name(layer)
        for start in range(0, len(cells), batch_size):
            chunk = cells[start : start + batch_size]
            patch = _patch_hook(site_info, chunk, source.cache[hook], n_prompts)
            with model.hooks([(hook, patch)]):
                logits = base.resume(layer, copies=len(chunk))
            for c in range(len(chunk)):
                raw[li, start + c] = evaluate_metric(metric, logits[c * n_prompts : (c + 1) * n_prompts])
            bar.update(len(chunk))


def _sweep_suffixes(model, site_info, layers, cells, base, source, metric, batch_size, raw, bar) -> None:
    """Cells by patched position, ``batch_size`` a pass, each pass over positions ``start ..`` only.

    A pass holds the next ``batch_size`` cells in order of position (any layers); it runs from
    ``start``, its smallest patched position: a cell patched later recomputes a few positions it
    cannot change, which costs less than more passes would (each pass runs every block from its
    first layer on). Cells join the pass at their own layer, by increasing layer; each layer's
    hook patches only the rows that join there (earlier rows carry their own patch already).
    The metric sees whole logits: positions ``< start`` from the unpatched run.
    """
    n_prompts = base.batch
    order = sorted((cell[0], layer, li, ci) for li, layer in enumerate(layers) for ci, cell in enumerate(cells))
    for first in range(0, len(order), batch_size):
        start = order[first][0]
        chunk = sorted(order[first : first + batch_size], key=lambda member: member[1:])  # by layer
        entries, hooks, offset = [], [], 0
        for layer, members in itertools.groupby(chunk, key=lambda member: member[1]):
            patched = [cells[ci] for _, _, _, ci in members]
            hook = site_info.hook_name(layer)
            hooks.append((hook, _patch_hook(site_info, patched, source.cache[hook], n_prompts,
                                            row_offset=offset, start=start)))
            entries.append((layer, len(patched)))
            offset += len(patched) * n_prompts
        with model.hooks(hooks):
            logits = base.resume_suffix(start, entries)
        prefix = base.logits[:, :start]
        for c, (_, _, li, ci) in enumerate(chunk):
            rows = logits[c * n_prompts : (c + 1) * n_prompts]
            raw[li, ci] = evaluate_metric(metric, torch.cat([prefix, rows], dim=1) if start else rows)
        bar.update(len(chunk))


def patched_logits(model, clean, corrupt, site: str, layer: int, cells: Sequence[Sequence[int]], *,
                   mode: str = "denoise") -> torch.Tensor:
    """Logits of one run with some cells of one layer patched: a single cell of a sweep, re-run.

    The run :func:`patch_sweep` makes for a cell (denoising: the corrupted prompts with the clean
    activation written in; noising: the reverse), as one full forward with the same in-place
    hook, so ``metric(patched_logits(...))`` equals the sweep's ``raw`` value of that cell (to
    rounding: the sweep resumes from the patched block).
    Several cells are patched together (every head at one position, say).

    Args:
        model, clean, corrupt, mode: as in :func:`patch_sweep`.
        site: a site name (``workbench.models.sites.SITES``).
        layer: the patched layer.
        cells: index tuples along the site's axes: ``(pos,)``, ``(head,)`` or ``(pos, head)``.

    Returns:
        Logits ``[batch, pos, d_vocab]``.

    >>> logits = patched_logits(model, clean, corrupt, "resid_pre", layer=3, cells=[(5,)])  # doctest: +SKIP
    """
    site_info = get_site(site)
    if mode not in MODES:
        raise PatchingError(f"mode={mode!r}; use one of {MODES}")
    clean_tokens, corrupt_tokens = paired_tokens(model, clean, corrupt)
    layer = _check_indices("layer", [layer], model.cfg.n_layers)[0]
    sizes = {"pos": clean_tokens.shape[1], "head": model.cfg.n_heads}
    checked = []
    for cell in cells:
        cell = tuple(cell)
        if len(cell) != len(site_info.axes):
            raise PatchingError(f"cell {cell}: site {site!r} has axes {site_info.axes}, one index each")
        checked.append(tuple(_check_indices(axis, [i], sizes[axis])[0] for axis, i in zip(site_info.axes, cell, strict=True)))
    base, source = (corrupt_tokens, clean_tokens) if mode == "denoise" else (clean_tokens, corrupt_tokens)
    hook = site_info.hook_name(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[hook])
        # One hook per cell, composed in one forward: each writes its own cell into every prompt.
        hooks = [(hook, _patch_hook(site_info, [cell], cache[hook], base.shape[0])) for cell in checked]
        with model.hooks(hooks):
            return model(base)


def paired_tokens(model, clean, corrupt) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[batch, pos]`` of clean and corrupted prompts, checked to line up."""
    clean_tokens = prompt_tokens(model, clean, "clean")
    corrupt_tokens = prompt_tokens(model, corrupt, "corrupt")
    if clean_tokens.shape != corrupt_tokens.shape:
        raise PatchingError(
            f"clean prompts are {tuple(clean_tokens.shape)} tokens ([prompts, tokens]) but corrupted "
            f"prompts are {tuple(corrupt_tokens.shape)}; each clean/corrupt pair must have the same number "
            "of tokens. wb.token_alignment(model, clean, corrupt) shows the tokens side by side."
        )
    return clean_tokens, corrupt_tokens


def prompt_tokens(model, prompts, argument: str) -> torch.Tensor:
    """One prompt, a list of prompts or a token tensor -> ``[batch, pos]`` (equal lengths required).

    A prompt may be a conversation (a list of ``{"role", "content"}`` dicts), tokenized with the
    model's chat template as ``model.to_tokens`` does; a list of conversations pairs by index.
    """
    if isinstance(prompts, torch.Tensor):
        tokens = prompts if prompts.dim() == 2 else prompts.unsqueeze(0)
        return tokens.to(model.cfg.device)
    if isinstance(prompts, str) or is_conversation(prompts):
        prompts = [prompts]
    if not prompts:
        raise PatchingError(f"{argument}: no prompts given")
    rows = [model.to_tokens(p)[0] for p in prompts]
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        detail = ", ".join(f"#{i}: {n}" for i, n in enumerate(lengths))
        raise PatchingError(
            f"{argument} prompts have different token lengths ({detail}); a batched sweep needs them "
            "equal. wb.token_alignment(model, clean, corrupt) shows the tokens of each pair."
        )
    return torch.stack(rows)


def token_alignment(model, clean, corrupt) -> pd.DataFrame:
    """The tokens of each clean/corrupt pair side by side: why two prompts do not line up.

    One row per (pair, position): ``pair``, ``pos``, ``clean``, ``corrupt``, ``same``. Missing
    tokens (the shorter prompt) are empty strings.

    >>> wb.token_alignment(model, "Mary gave", "Christina gave")        # doctest: +SKIP
    """
    clean = [clean] if isinstance(clean, str) or is_conversation(clean) else list(clean)
    corrupt = [corrupt] if isinstance(corrupt, str) or is_conversation(corrupt) else list(corrupt)
    if len(clean) != len(corrupt):
        raise PatchingError(f"{len(clean)} clean prompts but {len(corrupt)} corrupted ones")
    rows = []
    for pair, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
        ta, tb = model.to_str_tokens(a), model.to_str_tokens(b)
        for pos in range(max(len(ta), len(tb))):
            x = ta[pos] if pos < len(ta) else ""
            y = tb[pos] if pos < len(tb) else ""
            rows.append({"pair": pair, "pos": pos, "clean": x, "corrupt": y, "same": x == y,
                         "clean_length": len(ta), "corrupt_length": len(tb)})
    return pd.DataFrame(rows)


def _check_indices(argument: str, values: Sequence[int] | None, size: int) -> list[int]:
    if values is None:
        return list(range(size))
    out = []
    for v in values:
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or (isinstance(v, torch.Tensor) and v.numel() == 1)):
            raise PatchingError(f"{argument}: {v!r} is not an integer index")
        v = int(v)
        if not -size <= v < size:
            raise PatchingError(f"{argument}: {v} is out of range (there are {size}: 0..{size - 1})")
        out.append(v % size)
    if not out:
        raise PatchingError(f"{argument}: empty selection")
    return out


def _cells(site: Site, positions: list[int], heads: list[int]) -> list[tuple[int, ...]]:
    if site.axes == ("pos",):
        return [(p,) for p in positions]
    if site.axes == ("head",):
        return [(h,) for h in heads]
    return [(p, h) for p in positions for h in heads]


def _patch_hook(site: Site, chunk: list[tuple[int, ...]], source: torch.Tensor, n_prompts: int, *,
                row_offset: int = 0, start: int = 0):
    """A hook writing ``source`` into copy ``c`` of the batch at cell ``chunk[c]``.

    Copy ``c`` is rows ``row_offset + c * n_prompts ..`` of the activation; when the run covers
    only positions ``start ..`` (a prefix-reusing pass), position ``p`` is the activation's
    ``p - start``.

    It writes in place, on purpose: the bridge's ``hook_resid_mid`` is the MLP norm's input,
    and only an in-place write also reaches the residual connection around the MLP (a
    returned copy would patch the MLP's input alone). Sweeps run without gradients, so this
    is safe.
    """
    copies = len(chunk)
    prompt_of_row = torch.arange(copies * n_prompts) % n_prompts
    rows = torch.arange(copies * n_prompts) + row_offset
    cell = torch.tensor(chunk).repeat_interleave(n_prompts, dim=0)  # [rows, len(axes)]
    at = cell[:, 0] - start  # the patched position within the activation (pos-resolved sites)

    def patch(activation: torch.Tensor, hook) -> torch.Tensor:
        src = source.to(activation.device, activation.dtype)
        if site.axes == ("pos",):
            activation[rows, at] = src[prompt_of_row, cell[:, 0]]
        elif site.axes == ("head",):
            activation[rows, :, cell[:, 0]] = src[prompt_of_row, :, cell[:, 0]]
        else:
            activation[rows, at, cell[:, 1]] = src[prompt_of_row, cell[:, 0], cell[:, 1]]
        return activation

    return patch
