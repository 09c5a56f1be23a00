"""Meta's original LLaMA release format, converted to a Hugging Face ``LlamaForCausalLM``.

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

:func:`load_meta_checkpoint` reads such a folder, checks it thoroughly (every problem becomes a
:class:`~workbench.common.errors.CheckpointError` naming the file), merges the model-parallel
shards, rewrites the weights to Hugging Face's layout and returns a ``LlamaForCausalLM``
together with a :class:`~workbench.models.sp_tokenizer.SentencePieceLlamaTokenizer`.
LLaMA 3, 3.1, 3.2 and 3.3 keep the layout (one folder per model, ``tokenizer.model`` beside the
shards) but their ``tokenizer.model`` is a tiktoken BPE rank file, read by
:class:`~workbench.models.tiktoken_tokenizer.TiktokenLlamaTokenizer`, and their ``params.json``
may ask for LLaMA-3.1's rotary scaling (``use_scaled_rope``), which becomes HF's ``"llama3"``
rope type (:func:`~workbench.models.meta_params.rope_parameters`).
``params.json`` is read by :mod:`workbench.models.meta_params`, the shards are found and merged
by :mod:`workbench.models.meta_shards`; this module renames and permutes the merged tensors for
Hugging Face and holds the format's row in :data:`workbench.models.formats.FORMATS`
(:func:`detect_meta`, :func:`load_meta_format`).

Shard files are pickles; they are only ever read through
:func:`~workbench.models.safe_load.load_torch_file`, which never executes code hidden in them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.common.errors import CheckpointError
from workbench.models.meta_params import PARAMS_FILE, MetaParams, build_config, read_params
from workbench.models.meta_shards import SHARD_RE, find_shards, merge_shards
from workbench.models.sp_tokenizer import SentencePieceLlamaTokenizer, load_sentencepiece_tokenizer
from workbench.models.tiktoken_tokenizer import (
    TiktokenLlamaTokenizer,
    is_tiktoken_file,
    load_tiktoken_tokenizer,
)
from workbench.models.verify import checked_source

if TYPE_CHECKING:
    from workbench.models.hooked import ModelSource

MetaTokenizer = SentencePieceLlamaTokenizer | TiktokenLlamaTokenizer
TOKENIZER_FILE = "tokenizer.model"

# --------------------------------------------------------------------------------------------
# Recognising the format and locating files
# --------------------------------------------------------------------------------------------


def detect_meta(source: str | Path | None) -> bool:
    """Whether ``source`` is a folder in Meta's release format: one holding ``params.json``.

    ``params.json`` alone decides, so that a folder with it but no shards is loaded as Meta's
    format and fails saying which shard file is missing.

    Args:
        source: what was passed to ``load_model``.

    Returns:
        True for a folder with a ``params.json``.

    >>> detect_meta(None), detect_meta("/nonexistent")
    (False, False)
    """
    if source is None:
        return False
    folder = Path(source).expanduser()
    return folder.is_dir() and (folder / PARAMS_FILE).is_file()


def meta_near_miss(path: Path) -> str | None:
    """Why a folder that matched no format is not a Meta checkpoint, if it nearly is.

    >>> meta_near_miss(Path("/nonexistent")) is None
    True
    """
    if path.is_dir() and list(path.glob("consolidated.*.pth")):
        return (
            f"has consolidated.*.pth shards but no {PARAMS_FILE} (Meta's release format needs it)"
        )
    return None


def is_meta_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` looks like a Meta-format checkpoint (params.json + consolidated.*.pth).

    Only checks that the files exist; :func:`load_meta_checkpoint` validates their contents.

    >>> is_meta_checkpoint("/nonexistent")
    False
    """
    folder = Path(folder)
    if not (folder / PARAMS_FILE).is_file():
        return False
    return any(SHARD_RE.match(p.name) for p in folder.glob("consolidated.*.pth"))


def find_tokenizer(folder: str | Path) -> Path:
    """``tokenizer.model`` in ``folder``, else in its parent (where Meta's release puts it).

    Args:
        folder: the checkpoint folder (``llama/7B``).

    Returns:
        The tokenizer file's path (SentencePiece for LLaMA 1/2, tiktoken for LLaMA 3).

    Raises:
        CheckpointError: neither folder has one.

    >>> find_tokenizer("llama/7B")  # doctest: +SKIP
    PosixPath('llama/tokenizer.model')
    """
    folder = Path(folder)
    candidates = [folder / TOKENIZER_FILE, folder.resolve().parent / TOKENIZER_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"{candidates[0]}: file not found (also looked for {candidates[1]}); Meta checkpoints need "
        "their tokenizer.model (SentencePiece, or tiktoken for LLaMA 3)"
    )


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
    """Full (merged) shape of every Meta tensor implied by ``params``.

    Args:
        params: the checkpoint's validated params.
        vocab_size: rows of the embedding and the output matrix.

    Returns:
        Meta's tensor name -> shape, for every layer.

    >>> params = MetaParams(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, norm_eps=1e-5, multiple_of=32)
    >>> expected_shapes(params, 100)["layers.1.attention.wk.weight"]
    (32, 64)
    """
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
    """Rename merged Meta tensors to ``LlamaForCausalLM`` names, permuting q/k for HF's rotary.

    Args:
        merged: full tensors under Meta's names (:func:`~workbench.models.meta_shards.merge_shards`).
        params: the checkpoint's validated params.

    Returns:
        The same tensors (q/k rows permuted by :func:`permute_rotary`) under HF's names.

    >>> hf = to_hf_state_dict(merge_shards(find_shards(folder), params), params)  # doctest: +SKIP
    >>> hf["model.layers.0.self_attn.q_proj.weight"].shape  # doctest: +SKIP
    torch.Size([4096, 4096])
    """
    return {hf_name(name): to_hf_tensor(name, w, params) for name, w in merged.items()}


_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(meta_name: str) -> str:
    """The ``LlamaForCausalLM`` name of one of Meta's tensor names.

    >>> hf_name("layers.3.feed_forward.w1.weight")
    'model.layers.3.mlp.gate_proj.weight'
    """
    if meta_name in _TOP_NAMES:
        return _TOP_NAMES[meta_name]
    _, layer, rest = meta_name.split(".", 2)
    return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"


def hf_tensor_names(n_layers: int) -> list[str]:
    """Every weight name of an ``n_layers`` ``LlamaForCausalLM``, in Meta's order.

    >>> len(hf_tensor_names(2)), hf_tensor_names(2)[0]
    (21, 'model.embed_tokens.weight')
    """
    layers = [f"model.layers.{i}.{name}" for i in range(n_layers) for name in _LAYER_NAMES.values()]
    return [*list(_TOP_NAMES.values())[:2], *layers, "lm_head.weight"]


def to_hf_tensor(meta_name: str, w: torch.Tensor, params: MetaParams) -> torch.Tensor:
    """One merged Meta tensor in HF's layout: ``wq``/``wk`` rows permuted, others unchanged."""
    hd = params.head_dim
    if meta_name.endswith("attention.wq.weight"):
        return permute_rotary(w, params.n_heads, params.n_heads * hd, params.dim)
    if meta_name.endswith("attention.wk.weight"):
        return permute_rotary(w, params.n_kv_heads, params.n_kv_heads * hd, params.dim)
    return w


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_meta_checkpoint(
    folder: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, MetaTokenizer]:
    """Load a Meta-format LLaMA checkpoint as a Hugging Face model and tokenizer.

    Args:
        folder: the folder holding ``params.json`` and ``consolidated.NN.pth``;
            ``tokenizer.model`` may be there or in the parent folder.
        dtype: dtype of the returned model's weights.

    Returns:
        ``(model, tokenizer)``: an ``eval()``-mode ``LlamaForCausalLM`` on the CPU and a
        :class:`SentencePieceLlamaTokenizer` (LLaMA 1/2) or :class:`TiktokenLlamaTokenizer`
        (LLaMA 3.x) that prepends BOS as LLaMA expects.

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
    tokenizer, params = load_meta_tokenizer(tokenizer_path, params)

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
    if isinstance(tokenizer, TiktokenLlamaTokenizer):
        # Meta's generation stops at the end of text, of a turn, or of a tool-call message.
        stops = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
        model.generation_config.eos_token_id = [
            tokenizer.convert_tokens_to_ids(t) for t in stops if t in tokenizer.get_vocab()
        ]
    return model, tokenizer


def load_meta_tokenizer(path: Path, params: MetaParams) -> tuple[MetaTokenizer, MetaParams]:
    """The folder's tokenizer, by the file's content; a tiktoken file also marks LLaMA 3.

    Returns:
        ``(tokenizer, params)``, ``params.llama_version`` set to 3 for a tiktoken file.
    """
    if is_tiktoken_file(path):
        params = dataclasses.replace(params, llama_version=3)
        # LLaMA 3.1 renamed some reserved special tokens; its params.json is the first to have
        # use_scaled_rope (3.1, 3.2 and 3.3 all do).
        version = "3.1" if params.use_scaled_rope else "3.0"
        tokenizer = load_tiktoken_tokenizer(
            path, version=version, model_max_length=params.max_position_embeddings
        )
        return tokenizer, params
    tokenizer = load_sentencepiece_tokenizer(path, model_max_length=params.max_position_embeddings)
    return tokenizer, params


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


def load_meta_format(
    path: str | Path, *, dtype: torch.dtype, placement: dict | None = None, verify: bool = True
) -> tuple[LlamaForCausalLM, MetaTokenizer, ModelSource]:
    """The format registry's loader for Meta folders: checklist first, then the conversion.

    Args:
        path: the checkpoint folder.
        dtype: dtype of the returned model's weights.
        placement: unused; the converted model is built on the CPU and ``load_model`` places it.
        verify: check ``checklist.chk`` when present (a mismatch raises ``ChecksumError``
            before any shard is unpickled).

    Returns:
        ``(model, tokenizer, source)``; ``source.details`` has the shard count (``shards``) and
        the tokenizer kind (``tokenizer``: ``"sentencepiece"`` or ``"tiktoken"``).

    >>> model, tokenizer, source = load_meta_format("llama/7B", dtype=torch.float32)  # doctest: +SKIP
    >>> source.format, source.checksum_status  # doctest: +SKIP
    ('meta', 'verified')
    """
    path = Path(path)
    shards = len(list(path.glob("consolidated.*.pth")))
    try:
        kind = "tiktoken" if is_tiktoken_file(find_tokenizer(path)) else "sentencepiece"
    except CheckpointError:
        kind = "missing"  # load_meta_checkpoint says which file, after the checklist
    details = {"shards": shards, "tokenizer": kind}
    source = checked_source("meta", path, verify=verify, details=details)
    model, tokenizer = load_meta_checkpoint(path, dtype=dtype)
    return model, tokenizer, source
