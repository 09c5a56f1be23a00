"""Test helper: tiny random checkpoints in Meta's original LLaMA release format.

Other test files import this module (``from meta_checkpoint import ...``; pytest's default
``prepend`` import mode puts ``tests/unit`` on ``sys.path``). Nothing here uses the converter
under test: the shards are cut from full weights exactly as Meta's model-parallel layers hold
them, so a reader that merges them wrongly cannot agree with :func:`reference_forward`.

Layout written by :func:`write_meta_checkpoint`::

    folder/params.json
    folder/consolidated.00.pth ... consolidated.NN.pth
    folder/tokenizer.model            (or folder/../tokenizer.model with tokenizer_in_parent)
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import sentencepiece as spm
import torch

# Tiny shapes that still exercise GQA (4 query heads sharing 2 key/value heads) and an FFN size
# that is not simply 4*dim, so the intermediate-size formula matters.
TINY_DIM = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_MULTIPLE_OF = 32
TINY_VOCAB = 384

_WORDS = (
    "the model reads a token and writes the next one attention heads look back at earlier "
    "positions while the feed forward layers store facts about the world llamas live in the "
    "mountains of south america and eat grass interpretability means understanding what each "
    "neuron does residual stream logits embedding rotary position norm layer shard weight"
).split()
_EXTRAS = (
    "Café déjà vu, naïve façade — über straße!",
    "Emoji: 🦙🙂 and 日本語のテキスト.",
    "Numbers 12345 and 3.14159; tabs\tand\nnewlines.",
    "Ελληνικά κείμενα και русский текст.",
    "def f(x):\n    return x * 2  # code",
)


def tiny_corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """A few hundred varied sentences (ASCII words, accents, emoji, CJK, code, newlines)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        line = " ".join(words).capitalize() + rng.choice(".!?")
        if i % 7 == 0:
            line += " " + rng.choice(_EXTRAS)
        lines.append(line)
    return lines


def train_tiny_sentencepiece(path: str | Path, *, vocab_size: int = TINY_VOCAB) -> Path:
    """Train a LLaMA-style SentencePiece BPE model (byte fallback, <unk>=0 <s>=1 </s>=2, no pad).

    Settings mirror Meta's tokenizer.model: identity normalisation, dummy prefix, digits split,
    whitespace kept, 256 byte pieces so any UTF-8 text encodes without <unk>. Takes well under a
    second.

    Args:
        path: where to write the ``.model`` file (its parent folder must exist).
        vocab_size: total pieces, including the 3 specials and 256 bytes.

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    with path.open("wb") as model_file:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(tiny_corpus()),
            model_writer=model_file,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=0.995,  # rare characters (emoji, CJK) fall back to bytes
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    return path


def train_tiny_tiktoken(path: str | Path, *, n_merges: int = 200) -> Path:
    """Train a tiny byte-level BPE and write it as a tiktoken rank file, as LLaMA 3 ships it.

    Ranks 0..255 are the single bytes (in byte order, so every text encodes); each merge of the
    most frequent adjacent pair over the corpus's words gets the next rank. Written by hand
    rather than with the module under test, one ``<base64 bytes> <rank>`` line per token.

    Args:
        path: where to write ``tokenizer.model``.
        n_merges: learned tokens beyond the 256 bytes.

    Returns:
        ``path`` as a :class:`Path`.
    """
    words = Counter(
        tuple(bytes([b]) for b in word.encode("utf-8"))
        for line in tiny_corpus()
        for word in re.findall(r" ?\w+| ?[^\w\s]+|\s+", line)
    )
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        ranks.setdefault(best[0] + best[1], len(ranks))
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    path = Path(path)
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiktoken_vocab_size(path: str | Path) -> int:
    """Base tokens in a rank file plus LLaMA 3's 256 special tokens."""
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip()) + 256


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's ``FeedForward`` hidden size, written out independently of the converter."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def tiny_params(
    *, llama2: bool = False, vocab_size: int = -1, llama3: bool = False, scaled_rope: bool = False
) -> dict:
    """params.json contents for a tiny LLaMA-1 (``llama2=False``), LLaMA-2 or LLaMA-3 model.

    ``llama3`` gives LLaMA-3's keys (GQA, ``rope_theta`` 500000); ``scaled_rope`` adds
    LLaMA-3.1's ``use_scaled_rope``.
    """
    params = {
        "dim": TINY_DIM,
        "multiple_of": TINY_MULTIPLE_OF,
        "n_heads": TINY_HEADS,
        "n_layers": TINY_LAYERS,
        "norm_eps": 1e-6,
        "vocab_size": vocab_size,
    }
    if llama2:
        params.update(n_kv_heads=TINY_KV_HEADS, ffn_dim_multiplier=1.3, rope_theta=500000.0)
        params["norm_eps"] = 1e-5
    if llama3 or scaled_rope:
        params.update(n_kv_heads=TINY_KV_HEADS, ffn_dim_multiplier=1.3, rope_theta=500000.0)
        params["norm_eps"] = 1e-5
        if scaled_rope:
            params["use_scaled_rope"] = True
    return params


def random_meta_weights(params: dict, vocab_size: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full (unsharded) random weights under Meta's key names, fp32.

    Norm weights are random too (not ones) so a converter that drops or swaps them is caught.
    """
    gen = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))

    def rand(*shape, scale=None):
        scale = scale if scale is not None else shape[-1] ** -0.5
        return torch.randn(*shape, generator=gen) * scale

    def norm():
        return 1.0 + 0.1 * torch.randn(dim, generator=gen)

    weights = {"tok_embeddings.weight": rand(vocab_size, dim, scale=1.0)}
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        weights[p + "attention.wq.weight"] = rand(n_heads * head_dim, dim)
        weights[p + "attention.wk.weight"] = rand(n_kv * head_dim, dim)
        weights[p + "attention.wv.weight"] = rand(n_kv * head_dim, dim)
        weights[p + "attention.wo.weight"] = rand(dim, n_heads * head_dim)
        weights[p + "feed_forward.w1.weight"] = rand(hidden, dim)
        weights[p + "feed_forward.w2.weight"] = rand(dim, hidden)
        weights[p + "feed_forward.w3.weight"] = rand(hidden, dim)
        weights[p + "attention_norm.weight"] = norm()
        weights[p + "ffn_norm.weight"] = norm()
    weights["norm.weight"] = norm()
    weights["output.weight"] = rand(vocab_size, dim)
    return weights


# Which dimension each Meta weight is split along in model parallelism (None: replicated).
# Column-parallel linears split their output rows, row-parallel ones their input columns, and
# LLaMA-1/2's ParallelEmbedding splits the embedding dimension.
def _split_dim(name: str, vocab_parallel: bool = False) -> int | None:
    if name == "tok_embeddings.weight":
        return 0 if vocab_parallel else 1  # LLaMA-3's VocabParallelEmbedding splits the rows
    if name.endswith(("wo.weight", "w2.weight")):
        return 1
    if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")):
        return 0
    if name == "output.weight":
        return 0
    return None


def shard_meta_weights(
    weights: dict[str, torch.Tensor], n_shards: int, *, vocab_parallel: bool = False
) -> list[dict]:
    """Cut full weights into ``n_shards`` model-parallel state dicts, as Meta's release does."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, tensor in weights.items():
        dim = _split_dim(name, vocab_parallel)
        pieces = [tensor] * n_shards if dim is None else torch.chunk(tensor, n_shards, dim=dim)
        assert all(p.shape == pieces[0].shape for p in pieces), f"{name} does not split evenly"
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards


def write_meta_checkpoint(
    folder: str | Path,
    *,
    n_shards: int = 1,
    llama2: bool = False,
    seed: int = 0,
    params: dict | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    tokenizer_in_parent: bool = False,
    tokenizer_path: str | Path | None = None,
    with_rope_freqs: bool = True,
    tiktoken: bool = False,
) -> dict:
    """Write a tiny random Meta-format checkpoint and return its merged reference.

    Args:
        folder: created if missing.
        n_shards: number of ``consolidated.NN.pth`` files.
        llama2: LLaMA-2 style params (``n_kv_heads``, ``ffn_dim_multiplier``, ``rope_theta``).
        seed: seed for the random weights.
        params: override params.json entirely (``vocab_size`` -1 means "from the tokenizer").
        weights: reuse these full weights instead of drawing new ones (to write the same model
            with a different shard count).
        tokenizer_in_parent: put ``tokenizer.model`` in ``folder.parent`` as Meta's release does.
        tokenizer_path: copy this ``.model`` instead of training a new one (saves time).
        with_rope_freqs: add the ``rope.freqs`` buffer some LLaMA-1 shards carry.
        tiktoken: LLaMA 3's layout: a tiktoken rank file as ``tokenizer.model`` (trained by
            :func:`train_tiny_tiktoken` unless ``tokenizer_path`` is given) and the embedding
            split along the vocabulary.

    Returns:
        ``{"params": dict, "weights": full fp32 weights, "vocab_size": int,
        "tokenizer_path": Path, "folder": Path}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = dict(params) if params is not None else tiny_params(llama2=llama2)

    tok_target = (folder.parent if tokenizer_in_parent else folder) / "tokenizer.model"
    if tokenizer_path is not None:
        if Path(tokenizer_path).resolve() != tok_target.resolve():
            tok_target.write_bytes(Path(tokenizer_path).read_bytes())
    elif not tok_target.exists():
        (train_tiny_tiktoken if tiktoken else train_tiny_sentencepiece)(tok_target)
    if tiktoken:
        vocab_size = tiktoken_vocab_size(tok_target)
    else:
        vocab_size = spm.SentencePieceProcessor(model_file=str(tok_target)).get_piece_size()

    if weights is None:
        weights = random_meta_weights(params, vocab_size, seed=seed)
    (folder / "params.json").write_text(json.dumps(params))
    for rank, shard in enumerate(shard_meta_weights(weights, n_shards, vocab_parallel=tiktoken)):
        if with_rope_freqs:
            head_dim = params["dim"] // params["n_heads"]
            shard["rope.freqs"] = 1.0 / (
                10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
            )
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    return {
        "params": params,
        "weights": weights,
        "vocab_size": vocab_size,
        "tokenizer_path": tok_target,
        "folder": folder,
    }


def meta_scaled_freqs(freqs: list[float], params: dict) -> list[float]:
    """LLaMA-3.1's rotary frequency scaling, written out as Meta's ``apply_scaling`` describes it.

    Frequencies with a wavelength under ``8192 / high_freq_factor`` tokens are kept, those over
    ``8192 / low_freq_factor`` are divided by the factor, and the band between interpolates.
    """
    factor = params.get("rope_scaling_factor") or 8.0
    low, high = 1.0, params.get("rope_high_freq_factor") or 4.0
    old_context = 8192.0
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(freq)
        elif wavelen > old_context / low:
            out.append(freq / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def reference_forward(
    weights: dict[str, torch.Tensor],
    params: dict,
    tokens: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    positions: torch.Tensor | None = None,
):
    """LLaMA's forward pass straight from Meta's ``model.py``, on unsharded Meta weights.

    Independent oracle for the converter: rotary embeddings use Meta's complex-number
    formulation on *interleaved* pairs (HF uses rotate-half on permuted q/k), so agreement
    proves the q/k permutation.

    Args:
        weights: full weights under Meta's names.
        params: params.json contents.
        tokens: ``[batch, seq]`` token ids.
        dtype: compute dtype (``torch.float64`` for a tight oracle).
        positions: rotary positions of the tokens (default ``0..seq-1``), to reach the
            positions where LLaMA-3.1's scaled frequencies differ from plain RoPE.

    Returns:
        ``[batch, seq, vocab]`` logits in ``dtype``.
    """
    dim, n_heads, eps = params["dim"], params["n_heads"], params["norm_eps"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    theta = params.get("rope_theta", 10000.0)
    bsz, seqlen = tokens.shape

    def rms_norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    weights = {k: v.to(dtype) for k, v in weights.items()}
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].to(dtype) / head_dim))
    if params.get("use_scaled_rope"):
        freqs = torch.tensor(meta_scaled_freqs(freqs.tolist(), params), dtype=dtype)
    pos = torch.arange(seqlen) if positions is None else positions
    freqs_cis = torch.polar(
        torch.ones(seqlen, head_dim // 2, dtype=dtype), torch.outer(pos.to(dtype), freqs)
    )

    def rotary(x):  # x: [b, s, h, head_dim]; pairs (0,1), (2,3), ... are complex numbers
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)

    mask = torch.full((seqlen, seqlen), float("-inf"), dtype=dtype).triu(1)
    h = weights["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        w = {
            k[len(f"layers.{i}.") :]: v for k, v in weights.items() if k.startswith(f"layers.{i}.")
        }
        x = rms_norm(h, w["attention_norm.weight"])
        q = (x @ w["attention.wq.weight"].T).view(bsz, seqlen, n_heads, head_dim)
        k = (x @ w["attention.wk.weight"].T).view(bsz, seqlen, n_kv, head_dim)
        v = (x @ w["attention.wv.weight"].T).view(bsz, seqlen, n_kv, head_dim)
        q, k = rotary(q), rotary(k)
        k = k.repeat_interleave(n_heads // n_kv, dim=2)  # Meta's repeat_kv
        v = v.repeat_interleave(n_heads // n_kv, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(2, 3) / head_dim**0.5 + mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, seqlen, -1)
        h = h + out @ w["attention.wo.weight"].T
        x = rms_norm(h, w["ffn_norm.weight"])
        ff = torch.nn.functional.silu(x @ w["feed_forward.w1.weight"].T) * (
            x @ w["feed_forward.w3.weight"].T
        )
        h = h + ff @ w["feed_forward.w2.weight"].T
    return rms_norm(h, weights["norm.weight"]) @ weights["output.weight"].T
