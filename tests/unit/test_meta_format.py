"""Meta's original LLaMA format: shard merging, HF conversion, tokenizer, and bad input.

Every model here is tiny and random (dim 64, 2 layers); the oracle for the converted model is
``meta_checkpoint.reference_forward``, a direct transcription of Meta's forward pass that never
touches the converter.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
from pathlib import Path

import meta_checkpoint as mc
import pytest
import sentencepiece as spm
import torch

from workbench.common.errors import CheckpointError
from workbench.models import meta
from workbench.models.meta import is_meta_checkpoint, load_meta_checkpoint
from workbench.models.meta_params import MetaParams, meta_intermediate_size, read_params
from workbench.models.sp_tokenizer import SentencePieceLlamaTokenizer

TEXTS = [
    "Hello world",
    "The llama eats grass in the mountains.",
    "Café déjà vu — naïve façade, über straße!",
    "Emoji 🦙🙂 and 日本語",
    "line one\nline two\n\n  indented\ttab",
    "  leading and trailing spaces  ",
    "<s> is literal text here </s>",
    "",
]


@pytest.fixture(scope="module")
def sp_model_file(tmp_path_factory) -> Path:
    """One tiny SentencePiece model for the whole module (training takes ~1 s)."""
    return mc.train_tiny_sentencepiece(tmp_path_factory.mktemp("sp") / "tokenizer.model")


@pytest.fixture(scope="module")
def sp(sp_model_file) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(sp_model_file))


@pytest.fixture
def write(tmp_path, sp_model_file):
    """``write(name, **kwargs)``: a Meta checkpoint under tmp_path/name, reusing the tokenizer."""

    def _write(name: str = "7B", **kwargs) -> dict:
        kwargs.setdefault("tokenizer_path", sp_model_file)
        return mc.write_meta_checkpoint(tmp_path / name, **kwargs)

    return _write


def _token_batch(tok, texts=("Hello world, café 🦙\nline two", "The llama eats grass.")):
    # Unpadded single sequences keep the comparison free of attention-mask effects.
    return [torch.tensor([tok(t)["input_ids"]]) for t in texts]


# ---- numerical equivalence ------------------------------------------------------------------


@pytest.mark.parametrize("llama2", [False, True], ids=["llama1", "llama2-gqa"])
def test_sharded_and_single_match_meta_reference(write, llama2):
    one = write("one", n_shards=1, llama2=llama2, seed=3)
    two = write("two", n_shards=2, llama2=llama2, weights=one["weights"])
    model1, tok = load_meta_checkpoint(one["folder"])
    model2, _ = load_meta_checkpoint(two["folder"])
    with torch.no_grad():
        for ids in _token_batch(tok):
            ref = mc.reference_forward(one["weights"], one["params"], ids)
            logits1 = model1(ids).logits
            logits2 = model2(ids).logits
            assert (logits1 - logits2).abs().max() <= 1e-5
            assert (logits1 - ref).abs().max() <= 1e-5
            assert (logits2 - ref).abs().max() <= 1e-5


def test_four_shards_llama1(write):
    # LLaMA-13B/65B-style: more ranks than 2, embedding split along its width.
    one = write("one", n_shards=1, seed=5, with_rope_freqs=False)
    four = write("four", n_shards=4, weights=one["weights"])
    model, tok = load_meta_checkpoint(four["folder"])
    ids = _token_batch(tok)[0]
    with torch.no_grad():
        ref = mc.reference_forward(one["weights"], one["params"], ids)
        assert (model(ids).logits - ref).abs().max() <= 1e-5


def test_reference_detects_missing_rotary_permutation(write, monkeypatch):
    # Guard against a vacuous oracle: without the q/k permutation the logits must disagree.
    ckpt = write(llama2=True, seed=1)
    monkeypatch.setattr(meta, "permute_rotary", lambda w, *args: w)
    model, tok = load_meta_checkpoint(ckpt["folder"])
    ids = _token_batch(tok)[0]
    with torch.no_grad():
        ref = mc.reference_forward(ckpt["weights"], ckpt["params"], ids)
        assert (model(ids).logits - ref).abs().max() > 1e-3


def test_bfloat16_load(write):
    ckpt = write(llama2=True)
    model, tok = load_meta_checkpoint(ckpt["folder"], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = _token_batch(tok)[0]
    with torch.no_grad():
        ref = mc.reference_forward(ckpt["weights"], ckpt["params"], ids)
        assert (model(ids).logits.float() - ref).abs().max() < 0.5


# ---- params.json and config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [
        (4096, 256, None, 11008),  # LLaMA 7B
        (5120, 256, None, 13824),  # LLaMA 13B
        (6656, 256, None, 17920),  # LLaMA-1 33B
        (8192, 256, None, 22016),  # LLaMA-1 65B
        (8192, 4096, 1.3, 28672),  # LLaMA-2 70B
        (4096, 1024, 1.3, 14336),  # LLaMA-3 8B
    ],
)
def test_intermediate_size_formula(dim, multiple_of, multiplier, expected):
    assert meta_intermediate_size(dim, multiple_of, multiplier) == expected
    params = MetaParams(
        dim=dim,
        n_layers=1,
        n_heads=32,
        n_kv_heads=8,
        norm_eps=1e-5,
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
    )
    assert params.intermediate_size == expected


def test_llama1_params_load(write, sp):
    ckpt = write(llama2=False)
    assert "n_kv_heads" not in ckpt["params"] and ckpt["params"]["vocab_size"] == -1
    params = read_params(ckpt["folder"])
    assert params.n_kv_heads == params.n_heads == mc.TINY_HEADS
    assert params.rope_theta == 10000.0 and params.llama_version == 1
    model, tok = load_meta_checkpoint(ckpt["folder"])
    cfg = model.config
    assert cfg.vocab_size == sp.get_piece_size() == mc.TINY_VOCAB
    assert cfg.num_key_value_heads == mc.TINY_HEADS
    assert cfg.intermediate_size == mc.ffn_hidden_dim(mc.TINY_DIM, mc.TINY_MULTIPLE_OF)
    assert cfg.max_position_embeddings == 2048
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert cfg.rms_norm_eps == 1e-6
    assert cfg.tie_word_embeddings is False
    assert (cfg.bos_token_id, cfg.eos_token_id) == (sp.bos_id(), sp.eos_id())
    assert cfg.pad_token_id == tok.pad_token_id == sp.unk_id()
    assert tok.model_max_length == 2048


def test_llama2_params_load(write):
    ckpt = write(llama2=True)
    params = read_params(ckpt["folder"])
    assert (params.n_kv_heads, params.ffn_dim_multiplier, params.rope_theta) == (2, 1.3, 500000.0)
    assert params.llama_version == 2
    model, _ = load_meta_checkpoint(ckpt["folder"])
    cfg = model.config
    assert cfg.num_attention_heads == mc.TINY_HEADS and cfg.num_key_value_heads == mc.TINY_KV_HEADS
    assert cfg.intermediate_size == mc.ffn_hidden_dim(mc.TINY_DIM, mc.TINY_MULTIPLE_OF, 1.3) == 224
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    assert cfg.max_position_embeddings == 4096
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, mc.TINY_DIM)


def test_max_seq_len_and_explicit_vocab(write):
    params = mc.tiny_params(llama2=True, vocab_size=mc.TINY_VOCAB)
    params["max_seq_len"] = 512
    model, _ = load_meta_checkpoint(write(params=params)["folder"])
    assert model.config.max_position_embeddings == 512


def test_tokenizer_in_parent_folder(write, tmp_path):
    ckpt = write("llama/7B", tokenizer_in_parent=True)
    assert not (ckpt["folder"] / "tokenizer.model").exists()
    assert (tmp_path / "llama" / "tokenizer.model").is_file()
    model, tok = load_meta_checkpoint(ckpt["folder"])
    assert tok.vocab_size == model.config.vocab_size


def test_is_meta_checkpoint(write, tmp_path):
    ckpt = write()
    assert is_meta_checkpoint(ckpt["folder"])
    assert not is_meta_checkpoint(tmp_path / "nowhere")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert not is_meta_checkpoint(tmp_path / "hf")


# ---- tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_sentencepiece(sp_model_file, sp, text):
    tok = SentencePieceLlamaTokenizer(sp_model_file)
    ids = tok(text)["input_ids"]
    assert ids == [sp.bos_id()] + sp.encode(text)
    assert ids.count(sp.bos_id()) == 1
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert tok.encode(text) == ids
    assert tok.convert_ids_to_tokens(ids[1:]) == [sp.id_to_piece(i) for i in ids[1:]]
    assert tok.decode(ids[1:]) == sp.decode(ids[1:]) == text
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == tok.bos_token + text


def test_tokenizer_byte_fallback_decodes_like_sentencepiece(sp_model_file, sp):
    tok = SentencePieceLlamaTokenizer(sp_model_file)
    ids = sp.encode("🦙\n")
    pieces = tok.convert_ids_to_tokens(ids)
    assert any(re.fullmatch(r"<0x[0-9A-F]{2}>", p) for p in pieces)  # really byte fallback
    assert tok.decode(ids) == sp.decode(ids) == "🦙\n"
    assert tok.convert_tokens_to_string(pieces) == "🦙\n"


def test_tokenizer_special_tokens_and_padding(sp_model_file, sp):
    tok = SentencePieceLlamaTokenizer(sp_model_file)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (
        sp.bos_id(),
        sp.eos_id(),
        sp.unk_id(),
    )
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert sp.pad_id() == -1 and 0 <= tok.pad_token_id < sp.get_piece_size()
    assert len(tok) == tok.vocab_size == sp.get_piece_size()  # nothing appended to the vocab

    texts = ["a", "Hello world, café 🦙"]
    batch = tok(texts, padding=True, return_tensors="pt")
    longest = len(sp.encode(texts[1])) + 1
    assert batch["input_ids"].shape == (2, longest)
    assert batch["input_ids"][:, 0].tolist() == [sp.bos_id()] * 2
    assert batch["attention_mask"][0].tolist() == [1, 1] + [0] * (longest - 2)
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == texts

    left = SentencePieceLlamaTokenizer(sp_model_file, padding_side="left")
    assert left(texts, padding=True)["input_ids"][0][-2:] == [sp.bos_id()] + sp.encode("a")


def test_tokenizer_save_and_reload(sp_model_file, sp, tmp_path):
    tok = SentencePieceLlamaTokenizer(sp_model_file)
    tok.save_pretrained(tmp_path / "saved")
    again = SentencePieceLlamaTokenizer.from_pretrained(tmp_path / "saved")
    for text in TEXTS:
        assert again(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)


def test_transformer_bridge_uses_tokenizer(write, sp):
    from transformer_lens.model_bridge import TransformerBridge

    ckpt = write(llama2=True)
    model, tok = load_meta_checkpoint(ckpt["folder"])
    bridge = TransformerBridge.boot_transformers(
        str(ckpt["folder"]), hf_model=model, tokenizer=tok, device="cpu"
    )
    text = "Hello café 🦙\nworld"
    expected = [sp.bos_id()] + sp.encode(text)
    assert bridge.to_tokens(text).tolist() == [expected]
    assert bridge.to_tokens(text, prepend_bos=False).tolist() == [expected[1:]]
    str_tokens = bridge.to_str_tokens(text)
    assert len(str_tokens) == len(expected) and str_tokens[0] == "<s>"
    assert bridge.to_string(torch.tensor(expected[1:])) == text
    out = bridge.generate(text, max_new_tokens=3, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.startswith(text)
    with torch.no_grad():
        ids = torch.tensor([expected])
        assert (bridge(text) - model(ids).logits).abs().max() <= 1e-4


# ---- bad input ------------------------------------------------------------------------------


def _edit_params(folder: Path, **changes):
    params = json.loads((folder / "params.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del params[key]
        else:
            params[key] = value
    (folder / "params.json").write_text(json.dumps(params))


_DELETE = object()


def _drop_tensor(path: Path, name: str):
    shard = torch.load(path, weights_only=True)
    del shard[name]
    torch.save(shard, path)


def _perturb_norm(path: Path):
    shard = torch.load(path, weights_only=True)
    shard["norm.weight"] = shard["norm.weight"] + 1.0
    torch.save(shard, path)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_CASES = {
    # name: (write kwargs, mutation(folder, tmp_path), file named in the message, other text)
    "params missing": ({}, lambda f: (f / "params.json").unlink(), "params.json", "not found"),
    "params not json": (
        {},
        lambda f: (f / "params.json").write_text("{dim: 64,"),
        "params.json",
        "JSON",
    ),
    "params not object": (
        {},
        lambda f: (f / "params.json").write_text("[1, 2]"),
        "params.json",
        "object",
    ),
    "params missing key": ({}, lambda f: _edit_params(f, dim=_DELETE), "params.json", "'dim'"),
    "params wrong type": ({}, lambda f: _edit_params(f, n_layers="2"), "params.json", "'n_layers'"),
    "params bool": ({}, lambda f: _edit_params(f, n_heads=True), "params.json", "'n_heads'"),
    "params heads": ({}, lambda f: _edit_params(f, n_heads=3), "params.json", "n_heads"),
    "tokenizer missing": (
        {},
        lambda f: (f / "tokenizer.model").unlink(),
        "tokenizer.model",
        "not found",
    ),
    "tokenizer corrupt": (
        {},
        lambda f: (f / "tokenizer.model").write_bytes(b"not a model"),
        "tokenizer.model",
        "SentencePiece",
    ),
    "no shards": (
        {},
        lambda f: (f / "consolidated.00.pth").unlink(),
        "consolidated",
        "no consolidated",
    ),
    "gap in shards": (
        {"n_shards": 2},
        lambda f: (f / "consolidated.01.pth").rename(f / "consolidated.02.pth"),
        "consolidated.01.pth",
        "contiguous",
    ),
    "kv heads vs shards": (
        {"n_shards": 4, "llama2": True},
        lambda f: None,
        "params.json",
        "n_kv_heads=2",
    ),
    "different keys": (
        {"n_shards": 2},
        lambda f: _drop_tensor(f / "consolidated.01.pth", "layers.1.ffn_norm.weight"),
        "consolidated.01.pth",
        "different tensors",
    ),
    "replicas differ": (
        {"n_shards": 2},
        lambda f: _perturb_norm(f / "consolidated.01.pth"),
        "consolidated.01.pth",
        "norm.weight",
    ),
    "truncated shard": (
        {"n_shards": 2},
        lambda f: _truncate(f / "consolidated.01.pth"),
        "consolidated.01.pth",
        "truncated",
    ),
    "ffn size": (
        {},
        lambda f: _edit_params(f, multiple_of=256),
        "consolidated.00.pth",
        "intermediate size",
    ),
    "params vocab": (
        {},
        lambda f: _edit_params(f, vocab_size=1000),
        "tokenizer.model",
        "vocab_size=1000",
    ),
    "too many layers": (
        {},
        lambda f: _edit_params(f, n_layers=3),
        "consolidated.00.pth",
        "missing",
    ),
    "unexpected tensor": (
        {},
        lambda f: _add_tensor(f / "consolidated.00.pth"),
        "consolidated.00.pth",
        "unexpected",
    ),
}


def _add_tensor(path: Path):
    shard = torch.load(path, weights_only=True)
    shard["layers.0.attention.bias"] = torch.zeros(3)
    torch.save(shard, path)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_checkpoint_error(write, case):
    kwargs, mutate, filename, detail = BAD_CASES[case]
    folder = write(**kwargs)["folder"]
    mutate(folder)
    with pytest.raises(CheckpointError) as info:
        load_meta_checkpoint(folder)
    message = str(info.value)
    assert filename in message, message
    assert detail in message, message


def test_vocab_mismatch_between_tokenizer_and_embedding(write):
    params = mc.tiny_params()
    weights = mc.random_meta_weights(params, mc.TINY_VOCAB + 2)
    folder = write(params=params, weights=weights)["folder"]
    with pytest.raises(CheckpointError, match=r"tokenizer\.model.*384 pieces.*386 rows"):
        load_meta_checkpoint(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_meta_checkpoint(tmp_path / "nowhere")


# ---- malicious pickles ----------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``func(*args)``: the classic pickle code-execution trick."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("kind", ["os.system", "builtins.open"])
def test_malicious_pickle_is_not_executed(write, tmp_path, kind):
    marker = tmp_path / f"pwned-{kind}"
    payload = (
        _Payload(os.system, (f"touch {marker}",))
        if kind == "os.system"
        else _Payload(builtins.open, (str(marker), "w"))
    )
    # The payload is real: plain unpickling would run it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(builtins.open, (str(probe), "w"))))
    assert probe.exists()

    folder = write()["folder"]
    shard = folder / "consolidated.00.pth"
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2), "evil": payload}, shard)
    with pytest.raises(CheckpointError) as info:
        load_meta_checkpoint(folder)
    message = str(info.value)
    assert "consolidated.00.pth" in message
    assert re.search(r"not (run|executed)", message), message
    assert not marker.exists()
