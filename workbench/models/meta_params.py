"""Meta's ``params.json``: the architecture of a LLaMA release, validated, and its ``LlamaConfig``.

A Meta release states its hyper-parameters in ``params.json`` (``dim``, ``n_layers``,
``n_heads`` ...), leaving out what LLaMA-1 took for granted (``n_kv_heads``, ``rope_theta``);
:func:`read_params` checks every value and fills in the defaults, and :func:`build_config`
turns the result into the ``LlamaConfig`` the converted model is built from.

>>> meta_intermediate_size(4096, 256)  # LLaMA-7B's FFN width
11008
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import LlamaConfig

from workbench.common.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

PARAMS_FILE = "params.json"
# LLaMA-3's trained context, which LLaMA-3.1's rotary scaling stretches.
LLAMA3_ORIGINAL_CONTEXT = 8192
LLAMA3_LOW_FREQ_FACTOR = 1.0


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
        llama_version: 1, 2 or 3, guessed from the keys present (LLaMA-2 files add
            ``n_kv_heads``, ``ffn_dim_multiplier`` or ``rope_theta``, or use ``norm_eps`` 1e-5;
            LLaMA-3 files have a 128,256-token vocabulary or ``use_scaled_rope``); the loader
            sets 3 when ``tokenizer.model`` is a tiktoken file.
        use_scaled_rope: LLaMA-3.1's rescaled rotary frequencies (see :func:`rope_parameters`).
        rope_scaling_factor: that scaling's factor (8 unless params.json says otherwise).
        rope_high_freq_factor: its high-frequency factor (4 unless params.json says otherwise).
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
    use_scaled_rope: bool = False
    rope_scaling_factor: float = 8.0
    rope_high_freq_factor: float = 4.0

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
        """Trained context: ``max_seq_len`` if given, else 2048 (LLaMA-1), 4096 (LLaMA-2),
        8192 (LLaMA-3) or 131072 (LLaMA-3.1 and later, with scaled rotary)."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        if self.llama_version >= 3:
            return 131072 if self.use_scaled_rope else LLAMA3_ORIGINAL_CONTEXT
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

    use_scaled_rope = raw.get("use_scaled_rope", False)
    if not isinstance(use_scaled_rope, bool):
        raise CheckpointError(f"{path}: 'use_scaled_rope' must be true or false, got {use_scaled_rope!r}")

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
        use_scaled_rope=use_scaled_rope,
        # Meta's later reference code reads these two optional keys (None: the 3.1 values).
        rope_scaling_factor=float(get("rope_scaling_factor", (int, float), default=8.0)),
        rope_high_freq_factor=float(get("rope_high_freq_factor", (int, float), default=4.0)),
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
    if "use_scaled_rope" in raw or raw.get("vocab_size") == 128256:
        return 3
    # LLaMA-2 7B/13B params.json have exactly LLaMA-1's keys; only norm_eps differs (1e-5 vs 1e-6).
    if any(key in raw for key in ("n_kv_heads", "ffn_dim_multiplier", "rope_theta")):
        return 2
    return 2 if raw.get("norm_eps") == 1e-5 else 1



def rope_parameters(params: MetaParams) -> dict:
    """HF ``rope_parameters`` for ``params``: plain RoPE, or LLaMA-3.1's ``"llama3"`` scaling.

    Meta's reference code (``apply_scaling``) keeps rotary frequencies whose wavelength is under
    ``8192 / high_freq_factor`` tokens, divides those longer than ``8192 / low_freq_factor`` by
    ``factor``, and interpolates linearly in ``8192 / wavelength`` between; HF's ``"llama3"``
    rope type computes the same from these four numbers.

    >>> rope_parameters(MetaParams(64, 2, 4, 4, 1e-5, 32, rope_theta=5e5, use_scaled_rope=True))
    {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}
    """
    if not params.use_scaled_rope:
        return {"rope_type": "default", "rope_theta": params.rope_theta}
    return {
        "rope_type": "llama3",
        "rope_theta": params.rope_theta,
        "factor": params.rope_scaling_factor,
        "low_freq_factor": LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": params.rope_high_freq_factor,
        "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT,
    }


def build_config(
    params: MetaParams, tokenizer: PreTrainedTokenizerBase, vocab_size: int, dtype: torch.dtype
) -> LlamaConfig:
    """The ``LlamaConfig`` equivalent to ``params`` (special token ids from the tokenizer).

    Args:
        params: the checkpoint's validated params.
        tokenizer: its tokenizer, for the BOS / EOS / pad ids.
        vocab_size: the vocabulary size (the tokenizer's, when params.json says -1).
        dtype: the dtype the model will be built in.

    Returns:
        A ``LlamaConfig`` for ``LlamaForCausalLM``: Meta's FFN width, its rotary base, its
        trained context (see :attr:`MetaParams.max_position_embeddings`), untied embeddings.

    >>> config = build_config(read_params("llama/7B"), tokenizer, 32000, torch.float16)  # doctest: +SKIP
    >>> config.intermediate_size  # doctest: +SKIP
    11008
    """
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
        rope_parameters=rope_parameters(params),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )
