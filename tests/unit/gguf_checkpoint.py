"""Test helper: write a tiny random LLaMA as a GGUF file, the way llama.cpp's converter would.

Tests import this to get GGUF checkpoints without downloading anything:

    model = tiny_llama(seed=0)
    write_tiny_gguf(tmp_path / "tiny.gguf", model)                      # F32, byte-level BPE
    write_tiny_gguf(tmp_path / "q8.gguf", model, tensor_type="Q8_0")     # quantized weights
    write_tiny_gguf(tmp_path / "sp.gguf", model, tokenizer_kind="llama") # sentencepiece vocab

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``): metadata keys under
``llama.*``, tensor names ``token_embd`` / ``blk.N.*`` / ``output*``, and q/k rows permuted from
HF's rotate-half order into llama.cpp's interleaved order (transformers undoes it on load).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

TINY_VOCAB_SIZE = 320
TOKENIZER_KINDS = ("gpt2", "llama")
TENSOR_TYPES = ("F32", "F16", "Q8_0")
_FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

# Byte-level BPE (tokenizer.ggml.model "gpt2"): "hello the world" -> hello | Ġthe | Ġworld.
GPT2_MERGES = [
    "Ġ t", "h e", "Ġt he", "l l", "he ll", "hell o", "o r", "Ġ w", "Ġw or", "Ġwor l", "Ġworl d",
]
# SentencePiece BPE (tokenizer.ggml.model "llama"): merges are implied by the pieces and their
# scores, best first. "hello the world" -> ▁hello | ▁the | ▁world.
LLAMA_PIECES = [
    "▁t", "he", "▁the", "ll", "▁h", "▁w", "or", "▁he", "▁hell", "▁hello", "▁wor", "▁worl", "▁world",
]
_LLAMA_CHARS = ["▁", "t", "h", "e", "l", "o", "w", "r", "d"]


def tiny_llama(
    seed: int = 0,
    *,
    vocab_size: int = TINY_VOCAB_SIZE,
    tie_word_embeddings: bool = False,
    rope_parameters: Mapping | None = None,
    max_position_embeddings: int = 256,
    qk_scale: float = 1.0,
) -> LlamaForCausalLM:
    """A random 2-layer LLaMA with grouped-query attention (4 heads, 2 KV heads), in float32.

    ``rope_parameters`` (HF's, e.g. ``{"rope_type": "llama3", "rope_theta": 5e5, ...}``)
    replaces plain RoPE with base 10000; ``qk_scale`` multiplies the query/key weights, so that
    attention is sharp enough for the rotary frequencies to show in the logits.

    >>> tiny_llama().config.num_key_value_heads
    2
    """
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters=dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}),
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Random norm gains, so a loader that drops or swaps the norms cannot pass by accident.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(qk_scale)
    return model


def write_tiny_gguf(
    path: str | Path,
    hf_model: LlamaForCausalLM,
    *,
    tokenizer_kind: str = "gpt2",
    architecture: str = "llama",
    tensor_type: str = "F32",
    skip_tensors: Collection[str] = (),
    extra_tensors: Mapping[str, np.ndarray] | None = None,
    rope_scaling: bool = True,
) -> None:
    """Write ``hf_model`` and a small tokenizer to ``path`` in llama.cpp's GGUF conventions.

    Args:
        path: the ``.gguf`` file to create.
        hf_model: a ``LlamaForCausalLM``, e.g. from :func:`tiny_llama`; its vocabulary must hold
            at least the tokenizer's tokens (the list is padded with ``[PADn]`` up to its size).
        tokenizer_kind: ``"gpt2"`` (byte-level BPE with merges) or ``"llama"`` (SentencePiece:
            tokens, scores, byte-fallback tokens).
        architecture: ``general.architecture``, which also prefixes the hyperparameter keys;
            anything but ``"llama"`` is for testing rejection.
        tensor_type: ``"F32"``, ``"F16"`` or ``"Q8_0"`` for the 2-D weights; norms stay F32,
            as llama.cpp keeps them.
        skip_tensors: GGUF tensor names to leave out (to test rejection of incomplete files).
        extra_tensors: further F32 tensors to write, by GGUF name (e.g. ``rope_freqs.weight``).
        rope_scaling: write the model's rotary scaling as llama.cpp's converter does: ``linear``
            and ``yarn`` as ``llama.rope.scaling.*`` keys, LLaMA-3.1's ``llama3`` as the
            ``rope_freqs.weight`` divisors only (see :func:`llama_cpp_rope_freqs`).
    """
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer_kind must be one of {TOKENIZER_KINDS}, got {tokenizer_kind!r}")
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type must be one of {TENSOR_TYPES}, got {tensor_type!r}")
    cfg = hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama-test")
    writer.add_file_type(_FILE_TYPES[tensor_type])
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    rope = cfg.rope_parameters
    extra = dict(extra_tensors or {})
    if rope_scaling and rope["rope_type"] == "llama3":
        extra["rope_freqs.weight"] = llama_cpp_rope_freqs(rope, head_dim)
    elif rope_scaling and rope["rope_type"] in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        writer.add_rope_scaling_factor(rope["factor"])
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    _add_tokenizer(writer, tokenizer_kind, cfg.vocab_size)

    for name, tensor in _gguf_tensors(hf_model):
        if name not in skip_tensors:
            _add_tensor(writer, name, tensor, tensor_type)
    for name, tensor in extra.items():
        writer.add_tensor(name, np.ascontiguousarray(tensor, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_cpp_rope_freqs(rope: Mapping, head_dim: int) -> np.ndarray:
    """The ``rope_freqs.weight`` llama.cpp's converter writes for LLaMA-3.1 scaling.

    One divisor per rotary pair: 1 for short wavelengths, ``factor`` for long ones, and in the
    band between the inverse of the interpolated scale; llama.cpp divides each frequency by it.
    """
    theta, factor = rope["rope_theta"], rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    divisors = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            divisors.append(1.0)
        elif wavelen > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def tokenizer_tokens(tokenizer_kind: str = "gpt2", vocab_size: int = TINY_VOCAB_SIZE) -> list[str]:
    """The token list :func:`write_tiny_gguf` writes, index = token id."""
    return _vocabulary(tokenizer_kind, vocab_size)[0]


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's LlamaModel.permute: HF pairs dimension i with i + head_dim/2 for RoPE,
    # llama.cpp pairs 2i with 2i+1, so each head's rows are interleaved.
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_tensors(hf_model: LlamaForCausalLM):
    cfg = hf_model.config
    state = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        hf = f"model.layers.{i}."
        blk = f"blk.{i}."
        yield blk + "attn_norm.weight", state[hf + "input_layernorm.weight"]
        yield blk + "attn_q.weight", _permute(state[hf + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        yield blk + "attn_k.weight", _permute(state[hf + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        yield blk + "attn_v.weight", state[hf + "self_attn.v_proj.weight"]
        yield blk + "attn_output.weight", state[hf + "self_attn.o_proj.weight"]
        yield blk + "ffn_norm.weight", state[hf + "post_attention_layernorm.weight"]
        yield blk + "ffn_gate.weight", state[hf + "mlp.gate_proj.weight"]
        yield blk + "ffn_up.weight", state[hf + "mlp.up_proj.weight"]
        yield blk + "ffn_down.weight", state[hf + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    # llama.cpp omits output.weight for tied embeddings; the loader reuses token_embd.
    if not cfg.tie_word_embeddings:
        yield "output.weight", state["lm_head.weight"]


def _add_tensor(writer: gguf.GGUFWriter, name: str, tensor: np.ndarray, tensor_type: str) -> None:
    tensor = np.ascontiguousarray(tensor, dtype=np.float32)
    if tensor.ndim == 1 or tensor_type == "F32":
        writer.add_tensor(name, tensor)
    elif tensor_type == "F16":
        writer.add_tensor(name, tensor.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[tensor_type]
        # The writer infers the logical shape from the packed bytes' shape and the type.
        writer.add_tensor(name, gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)


def _vocabulary(kind: str, vocab_size: int) -> tuple[list[str], list[int], list[float]]:
    T = gguf.TokenType
    if kind == "gpt2":
        byte_chars = list(bytes_to_unicode().values())
        tokens = ["<|endoftext|>", *byte_chars, *(m.replace(" ", "") for m in GPT2_MERGES)]
        types = [T.CONTROL] + [T.NORMAL] * (len(tokens) - 1)
        scores = [0.0] * len(tokens)
    else:
        tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
        types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
        scores = [0.0] * len(tokens)
        tokens += LLAMA_PIECES + _LLAMA_CHARS
        types += [T.NORMAL] * (len(LLAMA_PIECES) + len(_LLAMA_CHARS))
        # Higher score merges first, as in a SentencePiece model.
        scores += [-float(rank) for rank in range(len(LLAMA_PIECES))] + [-1000.0] * len(_LLAMA_CHARS)
    if len(tokens) > vocab_size:
        raise ValueError(f"the model's vocab_size {vocab_size} is below the {len(tokens)} tokens")
    # llama.cpp pads a vocabulary smaller than the embedding the same way.
    pad = range(len(tokens), vocab_size)
    return (
        tokens + [f"[PAD{i}]" for i in pad],
        [int(t) for t in types] + [int(T.UNUSED)] * len(pad),
        scores + [-1000.0] * len(pad),
    )


def _add_tokenizer(writer: gguf.GGUFWriter, kind: str, vocab_size: int) -> None:
    tokens, types, scores = _vocabulary(kind, vocab_size)
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "gpt2":
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_merges(GPT2_MERGES)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(0)
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
