"""Meta's model-parallel shards: finding ``consolidated.NN.pth`` and merging them into one state dict.

Meta saved each model-parallel rank's slice of the weights as its own pickle; LLaMA-13B has two
ranks, 65B/70B eight. :func:`merge_shards` reads them (never executing pickled code, see
:func:`~workbench.models.safe_load.load_torch_file`), checks they belong together and
concatenates every split tensor along the dimension Meta split it on. The result still has
Meta's tensor names; :mod:`workbench.models.meta` renames it to Hugging Face's layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from workbench.common.errors import CheckpointError
from workbench.models.meta_params import PARAMS_FILE, MetaParams
from workbench.models.safe_load import load_torch_file

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


def find_shards(folder: str | Path) -> list[Path]:
    """The ``consolidated.NN.pth`` files in rank order, checking they are numbered 00..N-1.

    Args:
        folder: the checkpoint folder.

    Returns:
        The shard paths, rank 0 first.

    Raises:
        CheckpointError: there are no shards, or a number in 00..N-1 is missing.

    >>> [p.name for p in find_shards("llama/13B")]  # doctest: +SKIP
    ['consolidated.00.pth', 'consolidated.01.pth']
    """
    folder = Path(folder)
    numbered = {}
    for path in folder.glob("consolidated.*.pth"):
        match = SHARD_RE.match(path.name)
        if match:
            numbered[int(match.group(1))] = path
    if not numbered:
        raise CheckpointError(f"{folder}: no consolidated.NN.pth shard files found")
    missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
    if missing:
        names = ", ".join(f"consolidated.{i:02d}.pth" for i in missing)
        raise CheckpointError(
            f"{folder}: shard numbering is not contiguous; missing {names} "
            f"(found {len(numbered)} shard files up to consolidated.{max(numbered):02d}.pth)"
        )
    return [numbered[i] for i in range(len(numbered))]



# Meta's model-parallel layers: column-parallel linears hold a slice of the output rows (dim 0),
# row-parallel linears a slice of the input columns (dim 1); norms are replicated on every rank.
_COLUMN_PARALLEL = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
)
_ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")
_REPLICATED = ("attention_norm.weight", "ffn_norm.weight")
# rope.freqs is a precomputed buffer some LLaMA-1 shards carry; HF recomputes it from rope_theta.
_IGNORED = {"rope.freqs"}


def concat_dim(
    name: str, shard_shape: torch.Size, params: MetaParams, n_shards: int
) -> int | None:
    """Dimension along which tensor ``name`` is split across ranks (None: replicated)."""
    if name == "output.weight":
        return 0
    if name == "tok_embeddings.weight":
        # LLaMA-1/2's ParallelEmbedding splits the embedding dim; LLaMA-3's VocabParallelEmbedding
        # splits the vocabulary. The shard's width tells them apart.
        return 0 if n_shards > 1 and shard_shape[-1] == params.dim else 1
    if name == "norm.weight":
        return None
    suffix = name.split(".", 2)[-1] if name.startswith("layers.") else ""
    if suffix in _COLUMN_PARALLEL:
        return 0
    if suffix in _ROW_PARALLEL:
        return 1
    if suffix in _REPLICATED:
        return None
    raise KeyError(name)


def merge_shards(shard_paths: list[Path], params: MetaParams) -> dict[str, torch.Tensor]:
    """Load every shard (safely) and merge them into one state dict under Meta's names.

    Args:
        shard_paths: ``consolidated.NN.pth`` files in rank order.
        params: the checkpoint's validated params.

    Returns:
        Full tensors keyed by Meta's names (``rope.freqs`` dropped), in the shards' dtype.

    Raises:
        CheckpointError: a shard is unreadable or unsafe, the shard count does not divide the
            head counts or width, shards hold different tensor names or shapes, replicated
            tensors differ, or a tensor name is unknown.

    >>> from workbench.models.meta_params import read_params
    >>> merged = merge_shards(find_shards("llama/13B"), read_params("llama/13B"))  # doctest: +SKIP
    >>> merged["layers.0.attention.wq.weight"].shape  # doctest: +SKIP
    torch.Size([5120, 5120])
    """
    shards, names = open_shards(shard_paths, params)
    return {name: merge_tensor(name, [shard[name] for shard in shards], shard_paths, params) for name in names}


def open_shards(
    shard_paths: list[Path], params: MetaParams
) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """Open every shard (safely, memory-mapped) and check they belong together.

    Args:
        shard_paths: ``consolidated.NN.pth`` files in rank order.
        params: the checkpoint's validated params.

    Returns:
        ``(shards, names)``: each shard's state dict (tensors backed by the file's memory map,
        so nothing is read until used) and the sorted names to merge (``rope.freqs`` dropped).

    Raises:
        CheckpointError: the shard count does not divide the head counts or width, a shard is
            unreadable or unsafe, or shards hold different tensor names.
    """
    n = len(shard_paths)
    first = shard_paths[0]
    folder = first.parent
    # Meta gives each rank n_heads/n query heads and n_kv_heads/n key/value heads (its
    # Attention divides by the model-parallel size); anything else is not a Meta layout.
    for what, value in (
        ("dim", params.dim),
        ("n_heads", params.n_heads),
        ("n_kv_heads", params.n_kv_heads),
    ):
        if value % n:
            raise CheckpointError(
                f"{folder / PARAMS_FILE}: {what}={value} is not divisible by the shard count {n} "
                f"({first.name}..{shard_paths[-1].name}), so they cannot be Meta's model-parallel "
                "split"
            )

    shards = [load_torch_file(path) for path in shard_paths]
    keys = set(shards[0])
    for path, shard in zip(shard_paths[1:], shards[1:], strict=True):
        if set(shard) != keys:
            extra = sorted(set(shard) - keys)[:3]
            absent = sorted(keys - set(shard))[:3]
            raise CheckpointError(
                f"{path}: holds different tensors from {first.name} "
                f"(extra: {extra or 'none'}, missing: {absent or 'none'})"
            )
    return shards, sorted(keys - _IGNORED)


def merge_tensor(
    name: str, pieces: list[torch.Tensor], shard_paths: list[Path], params: MetaParams
) -> torch.Tensor:
    """One tensor, merged from its per-rank ``pieces`` (rank order) under Meta's name.

    Raises:
        CheckpointError: the name is unknown, the pieces differ in shape or dtype, or
            replicated pieces differ.
    """
    first, n = shard_paths[0], len(shard_paths)
    try:
        dim = concat_dim(name, pieces[0].shape, params, n)
    except KeyError:
        raise CheckpointError(f"{first}: unexpected tensor {name!r} for a LLaMA checkpoint") from None
    for path, piece in zip(shard_paths, pieces, strict=True):
        if piece.shape != pieces[0].shape or piece.dtype != pieces[0].dtype:
            raise CheckpointError(
                f"{path}: {name!r} is {tuple(piece.shape)} {piece.dtype} but "
                f"{tuple(pieces[0].shape)} {pieces[0].dtype} in {first.name}"
            )
    if dim is None:
        for path, piece in zip(shard_paths[1:], pieces[1:], strict=True):
            if not torch.equal(piece, pieces[0]):
                raise CheckpointError(f"{path}: replicated tensor {name!r} differs from {first.name}")
        return pieces[0]
    if pieces[0].dim() <= dim:
        raise CheckpointError(f"{first}: {name!r} has shape {tuple(pieces[0].shape)}, expected a matrix")
    return pieces[0] if n == 1 else torch.cat(pieces, dim=dim)
