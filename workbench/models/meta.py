"""Read Meta's original LLaMA release format and convert it to a Hugging Face ``LlamaForCausalLM``.

Meta distributed LLaMA-1 and LLaMA-2 as a folder per model size::

    llama/
        tokenizer.model           SentencePiece model, shared by all sizes
        7B/
            params.json           architecture hyper-parameters
            consolidated.00.pth   one state dict per model-parallel rank
        13B/
            params.json
            consolidated.00.pth
            consolidated.01.pth

This module reads such a folder, checks it thoroughly (every problem becomes a
:class:`~workbench.errors.CheckpointError` naming the file), merges the model-parallel shards,
rewrites the weights to Hugging Face's layout and returns a ``LlamaForCausalLM`` together with a
:class:`~workbench.models.sp_tokenizer.SentencePieceLlamaTokenizer`.

Shard files are pickles; they are only ever read through
:func:`~workbench.models.safe_load.load_torch_file`, which never executes code hidden in them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.errors import CheckpointError
from workbench.models.safe_load import load_torch_file
from workbench.models.sp_tokenizer import SentencePieceLlamaTokenizer, load_sentencepiece_tokenizer

PARAMS_FILE = "params.json"
TOKENIZER_FILE = "tokenizer.model"
_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")

# --------------------------------------------------------------------------------------------
# params.json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaParams:
    """The hyper-parameters in a Meta ``params.json``, validated and with defaults filled in.

    Attributes:
        dim: model (residual stream) width.
        n_layers: number of transformer blocks.
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (``n_heads`` unless the model uses GQA).
        norm_eps: RMSNorm epsilon.
        multiple_of: the FFN hidden size is rounded up to a multiple of this.
        ffn_dim_multiplier: optional FFN width multiplier (LLaMA-2 70B: 1.3).
        vocab_size: vocabulary size, or -1 when it is to be taken from the tokenizer.
        rope_theta: rotary base frequency (10000.0 unless given, e.g. 1e6 for Code Llama).
        max_seq_len: context length if params.json states one, else None.
        llama_version: 1 or 2, guessed from the keys present (LLaMA-2 files add ``n_kv_heads``,
            ``ffn_dim_multiplier`` or ``rope_theta``, or use ``norm_eps`` 1e-5).
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    multiple_of: int
    ffn_dim_multiplier: float | None = None
    vocab_size: int = -1
    rope_theta: float = 10000.0
    max_seq_len: int | None = None
    llama_version: int = 1

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads

    @property
    def intermediate_size(self) -> int:
        """FFN hidden size, by Meta's formula (see :func:`meta_intermediate_size`)."""
        return meta_intermediate_size(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def max_position_embeddings(self) -> int:
        """Trained context: ``max_seq_len`` if given, else 2048 (LLaMA-1) or 4096 (LLaMA-2)."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        return 4096 if self.llama_version >= 2 else 2048


def meta_intermediate_size(
    dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None
) -> int:
    """The FFN hidden size exactly as Meta's ``FeedForward`` computes it.

    Args:
        dim: model width.
        multiple_of: round the result up to a multiple of this.
        ffn_dim_multiplier: optional multiplier applied before rounding.

    Returns:
        The hidden size of ``w1``/``w3`` (HF ``intermediate_size``).

    >>> meta_intermediate_size(4096, 256)  # LLaMA-7B
    11008
    >>> meta_intermediate_size(8192, 4096, 1.3)  # LLaMA-2-70B
    28672
    """
    hidden = 4 * dim
    hidden = int(2 * hidden / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_params(folder: str | Path) -> MetaParams:
    """Read and validate ``params.json`` in a Meta checkpoint folder.

    Args:
        folder: the checkpoint folder (the one holding ``params.json``).

    Returns:
        The validated :class:`MetaParams`.

    Raises:
        CheckpointError: params.json is missing, not JSON, lacks a key, has a value of the wrong
            type or an inconsistent shape (e.g. ``dim`` not divisible by ``n_heads``).

    >>> read_params("llama/7B")  # doctest: +SKIP
    MetaParams(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, norm_eps=1e-06, ...)
    """
    path = Path(folder) / PARAMS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (not a Meta LLaMA checkpoint folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")

    def get(key, kind, *, default=..., positive=True):
        if key not in raw or (raw[key] is None and default is not ...):
            if default is ...:
                raise CheckpointError(f"{path}: missing required key {key!r}")
            return default
        value = raw[key]
        # bool is an int subclass in Python; `"dim": true` is still a malformed file.
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and positive and value <= 0:
            ok = False
        if not ok:
            want = "a positive " if positive else "a "
            want += "integer" if kind is int else "number"
            raise CheckpointError(f"{path}: {key!r} must be {want}, got {value!r}")
        return value

    if raw.get("use_scaled_rope"):
        # LLaMA-3.1 rescales the rotary frequencies; converting it as plain RoPE would silently
        # give a different model.
        raise CheckpointError(
            f"{path}: 'use_scaled_rope' (LLaMA-3.1 RoPE scaling) is not supported"
        )

    dim = get("dim", int)
    n_heads = get("n_heads", int)
    n_kv_heads = get("n_kv_heads", int, default=n_heads)
    vocab_size = get("vocab_size", int, default=-1, positive=False)
    ffn_dim_multiplier = get("ffn_dim_multiplier", (int, float), default=None)
    params = MetaParams(
        dim=dim,
        n_layers=get("n_layers", int),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        norm_eps=float(get("norm_eps", (int, float))),
        multiple_of=get("multiple_of", int),
        ffn_dim_multiplier=None if ffn_dim_multiplier is None else float(ffn_dim_multiplier),
        vocab_size=vocab_size,
        rope_theta=float(get("rope_theta", (int, float), default=10000.0)),
        max_seq_len=get("max_seq_len", int, default=None),
        llama_version=_guess_llama_version(raw),
    )

    if vocab_size != -1 and vocab_size <= 0:
        raise CheckpointError(f"{path}: 'vocab_size' must be positive or -1, got {vocab_size}")
    if dim % n_heads:
        raise CheckpointError(f"{path}: 'dim' {dim} is not divisible by 'n_heads' {n_heads}")
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{path}: 'n_heads' {n_heads} is not a multiple of 'n_kv_heads' {n_kv_heads}"
        )
    if params.head_dim % 2:
        raise CheckpointError(f"{path}: head size {params.head_dim} is odd; rotary needs pairs")
    return params


def _guess_llama_version(raw: dict) -> int:
    # LLaMA-2 7B/13B params.json have exactly LLaMA-1's keys; only norm_eps differs (1e-5 vs 1e-6).
    if any(key in raw for key in ("n_kv_heads", "ffn_dim_multiplier", "rope_theta")):
        return 2
    return 2 if raw.get("norm_eps") == 1e-5 else 1


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------


def is_meta_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` looks like a Meta-format checkpoint (params.json + consolidated.*.pth).

    Only checks that the files exist; :func:`load_meta_checkpoint` validates their contents.

    >>> is_meta_checkpoint("/nonexistent")
    False
    """
    folder = Path(folder)
    if not (folder / PARAMS_FILE).is_file():
        return False
    return any(_SHARD_RE.match(p.name) for p in folder.glob("consolidated.*.pth"))


def find_shards(folder: str | Path) -> list[Path]:
    """The ``consolidated.NN.pth`` files in rank order, checking they are numbered 00..N-1."""
    folder = Path(folder)
    numbered = {}
    for path in folder.glob("consolidated.*.pth"):
        match = _SHARD_RE.match(path.name)
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


def find_tokenizer(folder: str | Path) -> Path:
    """``tokenizer.model`` in ``folder``, else in its parent (where Meta's release puts it)."""
    folder = Path(folder)
    candidates = [folder / TOKENIZER_FILE, folder.resolve().parent / TOKENIZER_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"{candidates[0]}: file not found (also looked for {candidates[1]}); Meta checkpoints need "
        "the SentencePiece tokenizer.model"
    )


# --------------------------------------------------------------------------------------------
# Merging model-parallel shards
# --------------------------------------------------------------------------------------------

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


def _concat_dim(
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

    merged: dict[str, torch.Tensor] = {}
    for name in sorted(keys - _IGNORED):
        pieces = [shard[name] for shard in shards]
        try:
            dim = _concat_dim(name, pieces[0].shape, params, n)
        except KeyError:
            raise CheckpointError(
                f"{first}: unexpected tensor {name!r} for a LLaMA checkpoint"
            ) from None
        for path, piece in zip(shard_paths, pieces, strict=True):
            if piece.shape != pieces[0].shape or piece.dtype != pieces[0].dtype:
                raise CheckpointError(
                    f"{path}: {name!r} is {tuple(piece.shape)} {piece.dtype} but "
                    f"{tuple(pieces[0].shape)} {pieces[0].dtype} in {first.name}"
                )
        if dim is None:
            for path, piece in zip(shard_paths[1:], pieces[1:], strict=True):
                if not torch.equal(piece, pieces[0]):
                    raise CheckpointError(
                        f"{path}: replicated tensor {name!r} differs from {first.name}"
                    )
            merged[name] = pieces[0]
        elif pieces[0].dim() <= dim:
            raise CheckpointError(
                f"{first}: {name!r} has shape {tuple(pieces[0].shape)}, expected a matrix"
            )
        else:
            merged[name] = pieces[0] if n == 1 else torch.cat(pieces, dim=dim)
    return merged


# --------------------------------------------------------------------------------------------
# Meta -> Hugging Face layout
# --------------------------------------------------------------------------------------------


def permute_rotary(w: torch.Tensor, n_heads: int, dim1: int, dim2: int) -> torch.Tensor:
    """Reorder q/k projection rows from Meta's interleaved rotary pairs to HF's rotate-half.

    Meta rotates adjacent pairs ``(x0, x1), (x2, x3), ...`` of each head as complex numbers; HF's
    ``rotate_half`` pairs ``x_i`` with ``x_{i + head_dim/2}``. Permuting the rows of ``wq``/``wk``
    per head makes the two agree; this is transformers' ``convert_llama_weights_to_hf.permute``.

    Args:
        w: ``[dim1, dim2]`` weight (``wq``, or ``wk`` with ``dim1 = n_kv_heads * head_dim``).
        n_heads: number of heads the rows are grouped into.
        dim1: rows of ``w``.
        dim2: columns of ``w``.

    Returns:
        The permuted ``[dim1, dim2]`` weight.

    >>> permute_rotary(torch.arange(4.0)[:, None], 1, 4, 1).flatten().tolist()
    [0.0, 2.0, 1.0, 3.0]
    """
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def expected_shapes(params: MetaParams, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Full (merged) shape of every Meta tensor implied by ``params``."""
    d, hd = params.dim, params.head_dim
    hidden = params.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (vocab_size, d),
        "norm.weight": (d,),
        "output.weight": (vocab_size, d),
    }
    per_layer = {
        "attention.wq.weight": (params.n_heads * hd, d),
        "attention.wk.weight": (params.n_kv_heads * hd, d),
        "attention.wv.weight": (params.n_kv_heads * hd, d),
        "attention.wo.weight": (d, params.n_heads * hd),
        "feed_forward.w1.weight": (hidden, d),
        "feed_forward.w2.weight": (d, hidden),
        "feed_forward.w3.weight": (hidden, d),
        "attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
    }
    for i in range(params.n_layers):
        shapes.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def _check_shapes(merged, params: MetaParams, vocab_size: int, shard_paths, tokenizer_path) -> None:
    folder = shard_paths[0].parent
    shard_names = (
        f"{shard_paths[0].name}..{shard_paths[-1].name}"
        if len(shard_paths) > 1
        else shard_paths[0].name
    )
    # The two mismatches people actually hit get their own messages; everything else is generic.
    if "layers.0.feed_forward.w1.weight" in merged:
        got = merged["layers.0.feed_forward.w1.weight"].shape[0]
        if got != params.intermediate_size:
            raise CheckpointError(
                f"{folder / shard_names}: feed_forward.w1 has {got} rows but params.json "
                f"(dim={params.dim}, multiple_of={params.multiple_of}, "
                f"ffn_dim_multiplier={params.ffn_dim_multiplier}) gives intermediate size "
                f"{params.intermediate_size}"
            )
    if "tok_embeddings.weight" in merged:
        rows = merged["tok_embeddings.weight"].shape[0]
        if rows != vocab_size:
            raise CheckpointError(
                f"{tokenizer_path}: tokenizer has {vocab_size} pieces but the embedding in "
                f"{folder / shard_names} has {rows} rows (vocab size mismatch)"
            )
    expected = expected_shapes(params, vocab_size)
    missing = sorted(set(expected) - set(merged))
    if missing:
        raise CheckpointError(
            f"{folder / shard_names}: missing {len(missing)} tensors for "
            f"n_layers={params.n_layers}, e.g. {missing[:3]}"
        )
    unexpected = sorted(set(merged) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{folder / shard_names}: unexpected tensors for n_layers={params.n_layers}, "
            f"e.g. {unexpected[:3]}"
        )
    for name, shape in expected.items():
        if tuple(merged[name].shape) != shape:
            raise CheckpointError(
                f"{folder / shard_names}: {name!r} merges to shape {tuple(merged[name].shape)}, "
                f"but params.json implies {shape}"
            )


def to_hf_state_dict(
    merged: dict[str, torch.Tensor], params: MetaParams
) -> dict[str, torch.Tensor]:
    """Rename merged Meta tensors to ``LlamaForCausalLM`` names, permuting q/k for HF's rotary."""
    hd = params.head_dim
    out = {
        "model.embed_tokens.weight": merged["tok_embeddings.weight"],
        "model.norm.weight": merged["norm.weight"],
        "lm_head.weight": merged["output.weight"],
    }
    for i in range(params.n_layers):
        for meta_name, hf_name in _LAYER_NAMES.items():
            w = merged[f"layers.{i}.{meta_name}"]
            if meta_name == "attention.wq.weight":
                w = permute_rotary(w, params.n_heads, params.n_heads * hd, params.dim)
            elif meta_name == "attention.wk.weight":
                w = permute_rotary(w, params.n_kv_heads, params.n_kv_heads * hd, params.dim)
            out[f"model.layers.{i}.{hf_name}"] = w
    return out


def build_config(
    params: MetaParams, tokenizer: SentencePieceLlamaTokenizer, vocab_size: int, dtype: torch.dtype
) -> LlamaConfig:
    """The ``LlamaConfig`` equivalent to ``params`` (special token ids from the tokenizer)."""
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=vocab_size,
        hidden_size=params.dim,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.n_layers,
        num_attention_heads=params.n_heads,
        num_key_value_heads=params.n_kv_heads,
        hidden_act="silu",
        max_position_embeddings=params.max_position_embeddings,
        rms_norm_eps=params.norm_eps,
        # transformers 5 takes the rotary base only through rope_parameters.
        rope_parameters={"rope_type": "default", "rope_theta": params.rope_theta},
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_meta_checkpoint(
    folder: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, SentencePieceLlamaTokenizer]:
    """Load a Meta-format LLaMA checkpoint as a Hugging Face model and tokenizer.

    Args:
        folder: the folder holding ``params.json`` and ``consolidated.NN.pth``;
            ``tokenizer.model`` may be there or in the parent folder.
        dtype: dtype of the returned model's weights.

    Returns:
        ``(model, tokenizer)``: an ``eval()``-mode ``LlamaForCausalLM`` on the CPU and a
        :class:`SentencePieceLlamaTokenizer` that prepends BOS as LLaMA expects.

    Raises:
        CheckpointError: any file is missing, malformed, truncated, unsafe or inconsistent
            with the others; the message names the file.

    >>> model, tok = load_meta_checkpoint("llama/7B", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> model(**tok("The capital of France is", return_tensors="pt")).logits.shape  # doctest: +SKIP
    torch.Size([1, 7, 32000])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    params = read_params(folder)
    tokenizer_path = find_tokenizer(folder)
    shard_paths = find_shards(folder)
    tokenizer = load_sentencepiece_tokenizer(
        tokenizer_path, model_max_length=params.max_position_embeddings
    )

    vocab_size = tokenizer.vocab_size
    if params.vocab_size != -1 and params.vocab_size != vocab_size:
        raise CheckpointError(
            f"{tokenizer_path}: tokenizer has {vocab_size} pieces but {folder / PARAMS_FILE} "
            f"says vocab_size={params.vocab_size}"
        )

    merged = merge_shards(shard_paths, params)
    _check_shapes(merged, params, vocab_size, shard_paths, tokenizer_path)
    # Tensors already in `dtype` stay backed by the shard's private (copy-on-write) memory map:
    # a single-shard 7B model is then not held in RAM twice, and in-place edits never reach
    # the file.
    state_dict = {k: v.to(dtype) for k, v in to_hf_state_dict(merged, params).items()}
    del merged

    config = build_config(params, tokenizer, vocab_size, dtype)
    model = _model_from_state_dict(config, state_dict)
    model.config.name_or_path = str(folder)
    return model, tokenizer


def _model_from_state_dict(
    config: LlamaConfig, state_dict: dict[str, torch.Tensor]
) -> LlamaForCausalLM:
    # Building on the meta device skips random initialisation (minutes for 7B+) and a second
    # copy of the weights; assign=True then adopts our tensors as the parameters.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in any state dict, so they are still on
    # the meta device: rebuild the rotary module for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a transformers change added a buffer we do not know how to fill
        raise RuntimeError(f"tensors left uninitialised after conversion: {leftover[:5]}")
    return model.eval()
