"""LLaMA 3.x in Meta's release format: tiktoken tokenizer, scaled rotary, logits, verify and info.

The folders are tiny random models written by ``meta_checkpoint`` as Meta ships LLaMA 3.1
(``params.json`` with ``use_scaled_rope``, ``consolidated.NN.pth`` with the embedding split over
the vocabulary, a tiktoken ``tokenizer.model``, ``checklist.chk``). Oracles: ``tiktoken`` itself,
built here with LLaMA 3's pattern, for token ids; ``meta_checkpoint.reference_forward`` in fp64
(Meta's complex-number rotary on interleaved pairs, Meta's ``apply_scaling``) for logits.
"""

from __future__ import annotations

import hashlib
import json

import meta_checkpoint as mc
import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

from workbench.cli import main
from workbench.common.errors import CheckpointError
from workbench.models.loading import load_model
from workbench.models.meta import load_meta_checkpoint
from workbench.models.tiktoken_tokenizer import TiktokenLlamaTokenizer

# LLaMA 3's split pattern, written out here independently of the module under test.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Offsets of the special tokens both LLaMA 3.0 and 3.1 name, after the base vocabulary.
SHARED_SPECIALS = {
    "<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|start_header_id|>": 6,
    "<|end_header_id|>": 7, "<|eot_id|>": 9,
}  # fmt: skip
TEXTS = [
    "The model reads a token and writes the next one.",
    "Café déjà vu, naïve façade — über straße! 🦙🙂 日本語",
    "Numbers 12345 and 3.14159; tabs\tand\n\nnewlines.  Two  spaces",
    "def f(x):\n    return x * 2  # code\n",
    "don't we'll THEY'RE",
]


def write_checklist(folder) -> None:
    """checklist.chk as Meta ships it: the md5 of each file in the folder."""
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir())]
    (folder / "checklist.chk").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3") / "Llama3.1-8B"
    params = mc.tiny_params(scaled_rope=True)
    ref = mc.write_meta_checkpoint(folder, n_shards=2, params=params, seed=3, tiktoken=True)
    write_checklist(folder)
    return ref


@pytest.fixture(scope="module")
def encoding(llama31):
    """tiktoken's own encoder for the fixture's rank file, as Meta's reference builds it."""
    ranks = load_tiktoken_bpe(str(llama31["tokenizer_path"]))
    n = len(ranks)
    specials = {name: n + offset for name, offset in SHARED_SPECIALS.items()}
    return tiktoken.Encoding("llama3-test", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)  # fmt: skip


@pytest.fixture(scope="module")
def loaded64(llama31):
    return load_meta_checkpoint(llama31["folder"], dtype=torch.float64)


def test_token_ids_equal_tiktoken_with_one_bos(llama31, encoding, loaded64):
    _, tok = loaded64
    assert isinstance(tok, TiktokenLlamaTokenizer)
    bos = encoding.encode_single_token("<|begin_of_text|>")
    assert bos == len(load_tiktoken_bpe(str(llama31["tokenizer_path"])))  # right after the base
    assert tok.bos_token_id == bos and tok.bos_token == "<|begin_of_text|>"
    assert tok.vocab_size == len(tok) == llama31["vocab_size"] == bos + 256
    for text in TEXTS:
        want = encoding.encode_ordinary(text)
        assert len(want) < len(text.encode())  # the merges are used, not just bytes
        assert tok(text)["input_ids"] == [bos, *want]
        assert tok(text, add_special_tokens=False)["input_ids"] == want
        assert tok.decode(want) == text
        assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(want)) == text
    for name, offset in SHARED_SPECIALS.items():
        assert tok.convert_tokens_to_ids(name) == bos + offset
    # 3.1 names of the renamed reserved slots (Meta's llama-models tokenizer).
    assert tok.convert_ids_to_tokens([bos + 4, bos + 8, bos + 10, bos + 255]) == [
        "<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>",
        "<|reserved_special_token_246|>",
    ]  # fmt: skip
    assert tok.pad_token == "<|finetune_right_pad_id|>"


def test_special_token_text_and_padding(encoding, loaded64):
    _, tok = loaded64
    text = "hi<|eot_id|>there"
    eot = encoding.encode_single_token("<|eot_id|>")
    # Hugging Face convention (what a rendered chat template needs): the special token.
    assert tok(text, add_special_tokens=False)["input_ids"] == encoding.encode(
        text, allowed_special="all"
    )
    assert eot in tok(text)["input_ids"]
    # Meta's encode(): special-token text is plain text.
    literal = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert literal == encoding.encode_ordinary(text) and eot not in literal
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    short = batch["attention_mask"][0].sum().item()
    assert batch["input_ids"][0, short:].eq(tok.pad_token_id).all()
    assert tok.decode([tok.bos_token_id, *encoding.encode_ordinary("ok")], skip_special_tokens=True) == "ok"


def test_chat_template_matches_meta_chat_format(encoding, loaded64):
    _, tok = loaded64
    dialog = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  What do llamas eat?\n"},
    ]

    def special(name):
        return encoding.encode_single_token(name)

    # Meta's ChatFormat: header (start, role, end, "\n\n"), stripped content, <|eot_id|>.
    want = [special("<|begin_of_text|>")]
    for message in [*dialog, {"role": "assistant", "content": None}]:
        want += [special("<|start_header_id|>"), *encoding.encode_ordinary(message["role"])]
        want += [special("<|end_header_id|>"), *encoding.encode_ordinary("\n\n")]
        if message["content"] is not None:
            want += [*encoding.encode_ordinary(message["content"].strip()), special("<|eot_id|>")]
    got = tok.apply_chat_template(dialog, add_generation_prompt=True)
    got = got["input_ids"] if isinstance(got, dict) or hasattr(got, "keys") else got
    assert got == want


def test_logits_equal_meta_reference_fp64_with_scaled_rope(llama31, loaded64, encoding):
    model, tok = loaded64
    rope = model.config.rope_parameters
    assert rope == {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    }  # fmt: skip
    assert model.config.max_position_embeddings == 131072
    # HF's frequencies are Meta's apply_scaling ones (the pairs differ only in order).
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    plain = [500000.0 ** -(i / head_dim) for i in range(0, head_dim, 2)]
    want = torch.tensor(mc.meta_scaled_freqs(plain, llama31["params"]), dtype=torch.float64)
    assert torch.allclose(model.model.rotary_emb.inv_freq.double(), want, rtol=1e-6)
    assert not torch.allclose(want, torch.tensor(plain, dtype=torch.float64), rtol=1e-3)

    text = " ".join(TEXTS)
    tokens = torch.tensor([tok(text)["input_ids"]])
    assert tokens.shape[1] > 60  # far enough for the scaled low frequencies to matter
    with torch.no_grad():
        got = model(tokens).logits
    expected = mc.reference_forward(llama31["weights"], llama31["params"], tokens, dtype=torch.float64)
    assert got.dtype == torch.float64
    assert (got - expected).abs().max().item() <= 1e-5
    # Control: plain RoPE is measurably a different model.
    unscaled = {k: v for k, v in llama31["params"].items() if k != "use_scaled_rope"}
    plain_ref = mc.reference_forward(llama31["weights"], unscaled, tokens, dtype=torch.float64)
    assert (got - plain_ref).abs().max().item() > 1e-3
    stops = model.generation_config.eos_token_id
    assert set(stops) == {encoding.encode_single_token(t) for t in ("<|end_of_text|>", "<|eot_id|>")} | {
        tok.convert_tokens_to_ids("<|eom_id|>")
    }


def test_load_model_verify_and_info(llama31, capsys):
    folder = llama31["folder"]
    model = load_model(folder, device="cpu")
    info = model.info()
    assert info["format"] == "meta" and info["checksum_status"] == "verified"
    assert info["detail.shards"] == 2 and info["detail.tokenizer"] == "tiktoken"
    text = TEXTS[1]
    tokens = model.to_tokens(text)
    bos = model.tokenizer.bos_token_id
    assert tokens[0, 0].item() == bos and (tokens == bos).sum().item() == 1
    expected = mc.reference_forward(llama31["weights"], llama31["params"], tokens, dtype=torch.float64)
    with torch.no_grad():
        assert (model(tokens).double() - expected).abs().max().item() <= 1e-5
    assert main(["verify", str(folder)]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(folder), "--device", "cpu", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["format"] == "meta" and reported["checksum_status"] == "verified"
    assert reported["detail.tokenizer"] == "tiktoken"


def test_llama30_names_plain_rope_and_8k_context(tmp_path, llama31):
    folder = tmp_path / "Meta-Llama-3-8B"
    params = mc.tiny_params(llama3=True)
    ref = mc.write_meta_checkpoint(folder, params=params, tiktoken=True,
                                   tokenizer_path=llama31["tokenizer_path"])  # fmt: skip
    model, tok = load_meta_checkpoint(folder)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert model.config.max_position_embeddings == 8192
    bos = tok.bos_token_id
    assert tok.convert_ids_to_tokens([bos + 4, bos + 8, bos + 9]) == [
        "<|reserved_special_token_2|>", "<|reserved_special_token_4|>", "<|eot_id|>",
    ]  # fmt: skip
    assert tok.pad_token == "<|end_of_text|>"
    tokens = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        got = model(tokens).logits
    assert (got - mc.reference_forward(ref["weights"], ref["params"], tokens)).abs().max() <= 1e-5


def test_bad_rank_file_and_vocab_mismatch(tmp_path, llama31):
    folder = tmp_path / "bad"
    mc.write_meta_checkpoint(folder, params=mc.tiny_params(scaled_rope=True), tiktoken=True,
                             tokenizer_path=llama31["tokenizer_path"])  # fmt: skip
    tokenizer = folder / "tokenizer.model"
    lines = tokenizer.read_text().splitlines()
    tokenizer.write_text("\n".join([*lines[:5], lines[3], *lines[5:]]) + "\n")
    with pytest.raises(CheckpointError, match=r"tokenizer\.model: line 6: token .* appears twice"):
        load_meta_checkpoint(folder)
    tokenizer.write_text("\n".join(lines[:10] + ["!!notbase64 10"]) + "\n")
    with pytest.raises(CheckpointError, match=r"tokenizer\.model: line 11 is not"):
        load_meta_checkpoint(folder)
    tokenizer.write_text("\n".join(lines) + "\n")
    params = {**mc.tiny_params(scaled_rope=True), "vocab_size": 128256}
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ pieces but .*vocab_size=128256"):
        load_meta_checkpoint(folder)
    params["vocab_size"], params["use_scaled_rope"] = -1, "yes"
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match="params.json: 'use_scaled_rope' must be true or false"):
        load_meta_checkpoint(folder)


def test_tokenizer_saves_and_reopens(loaded64, tmp_path):
    _, tok = loaded64
    tok.save_pretrained(tmp_path)
    reopened = TiktokenLlamaTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == open(tok.vocab_file, "rb").read()
    for text in [*TEXTS, "a<|eot_id|>b"]:
        assert reopened(text)["input_ids"] == tok(text)["input_ids"]
    assert reopened.chat_template == tok.chat_template and len(reopened) == len(tok)
