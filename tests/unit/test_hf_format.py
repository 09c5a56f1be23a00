"""Hugging Face folders: safetensors and .bin, dtypes, format detection and bad input."""

import json
import os
import pickle

import pytest
import torch
from tiny_hf import write_hf_folder

from workbench.common.errors import CheckpointError
from workbench.models.loading import detect_format, load_model


def test_safetensors_folder_logits_equal_hf(hf_folder, tiny_model):
    _, reference = hf_folder
    tokens = tiny_model.to_tokens("the cat sat on the mat . what is the capital of france ?")
    with torch.no_grad():
        ours = tiny_model(tokens)
        theirs = reference(tokens).logits
    assert ours.shape == theirs.shape == (1, tokens.shape[1], reference.config.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert tiny_model.source.format == "hf"


def test_bin_folder_loads_same_weights(tmp_path):
    reference = write_hf_folder(tmp_path / "bin", seed=3, safe_serialization=False)
    assert not list((tmp_path / "bin").glob("*.safetensors"))
    model = load_model(tmp_path / "bin", device="cpu")
    tokens = model.to_tokens("the dog ran to the house")
    with torch.no_grad():
        assert (model(tokens) - reference(tokens).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_is_passed_through(hf_folder, dtype):
    model = load_model(hf_folder[0], dtype=dtype, device="cpu")
    assert model.dtype == getattr(torch, dtype)
    assert model.info()["dtype"] == dtype
    logits = model("the cat")
    assert torch.isfinite(logits.float()).all()


def test_bad_dtype_is_named():
    with pytest.raises(ValueError, match="dtype='int8'"):
        load_model(None, dtype="int8")


class _Planted:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_bin_is_refused_and_not_executed(tmp_path):
    folder = tmp_path / "evil"
    write_hf_folder(folder, safe_serialization=False)
    marker = tmp_path / "code-ran"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": state, "payload": _Planted(str(marker))}, f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as err:
        load_model(folder, device="cpu")
    assert "not run" in str(err.value) or "legacy" in str(err.value)
    assert not marker.exists()


def test_malicious_zip_pickle_is_refused(tmp_path):
    folder = tmp_path / "evil-zip"
    write_hf_folder(folder, safe_serialization=False)
    marker = tmp_path / "code-ran"
    torch.save({"payload": _Planted(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="was not run"):
        load_model(folder, device="cpu")
    assert not marker.exists()


def test_truncated_safetensors_names_the_file(tmp_path):
    folder = tmp_path / "cut"
    write_hf_folder(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_model(folder, device="cpu")


def test_other_architecture_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    write_hf_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*gpt2"):
        load_model(folder, device="cpu")


def test_folder_matching_no_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="matches no checkpoint format.*notes.txt"):
        load_model(tmp_path)


def test_missing_path_and_hub_id_detection(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model(tmp_path / "nope")
    assert detect_format("meta-llama/Llama-2-7b-hf") == ("hub", "meta-llama/Llama-2-7b-hf")
    assert detect_format(None) == ("embedded", None)


def test_formats_are_detected_in_table_order(tmp_path):
    from workbench.models.formats import FORMATS

    assert [f.name for f in FORMATS] == ["embedded", "meta", "hf", "gguf", "hub"]
    both = tmp_path / "both"
    both.mkdir()
    (both / "config.json").write_text("{}")
    assert detect_format(both) == ("hf", both)
    (both / "params.json").write_text("{}")
    assert detect_format(both) == ("meta", both)  # Meta's row comes first
    one = tmp_path / "one-gguf"
    one.mkdir()
    (one / "m.Q8_0.gguf").write_bytes(b"GGUF")
    assert detect_format(one) == ("gguf", one / "m.Q8_0.gguf")
    assert detect_format(str(one / "m.Q8_0.gguf")) == ("gguf", one / "m.Q8_0.gguf")
    (one / "n.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="matches no checkpoint format.*or one .gguf"):
        detect_format(one)


def test_near_misses_say_what_is_wrong(tmp_path):
    (tmp_path / "consolidated.00.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="consolidated.*pth shards but no params.json"):
        detect_format(tmp_path)
    with pytest.raises(CheckpointError, match="a single file must be a .gguf"):
        detect_format(tmp_path / "consolidated.00.pth")


def test_a_new_format_is_one_row(hf_folder, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from workbench.models import formats, hf_format

    folder = tmp_path / "marked"
    shutil.copytree(hf_folder[0], folder)
    (folder / "MARKED").write_text("")

    def load_marked(location, **options):
        model, tokenizer, source = hf_format.load_hf_format(location, **options)
        return model, tokenizer, dataclasses.replace(source, format="marked")

    row = formats.Format("marked", lambda s: s is not None and os.path.exists(os.path.join(s, "MARKED")), load_marked)
    monkeypatch.setattr(formats, "FORMATS", (row, *formats.FORMATS))
    assert detect_format(folder) == ("marked", folder)
    model = load_model(folder, device="cpu")
    assert model.source.format == "marked" and model.source.fingerprint
    assert detect_format(hf_folder[0])[0] == "hf"


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="hub id"):
        load_model("nobody-here/not-a-model", device="cpu")


def test_remote_code_is_never_trusted(tmp_path, hf_folder):
    folder = tmp_path / "remote"
    reference = write_hf_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'code-ran')!r}, 'w')\n")
    model = load_model(folder, device="cpu")
    assert not (tmp_path / "code-ran").exists()
    tokens = model.to_tokens("the cat")
    assert (model(tokens) - reference(tokens).logits).abs().max().item() <= 1e-5
    assert os.path.exists(folder / "evil.py")


def test_fast_attention_option(hf_folder, tiny_model):
    from workbench.models.fast_attention import sdpa_enabled

    fast = load_model(hf_folder[0], device="cpu", fast_attention=True)
    assert all(sdpa_enabled(block.attn) for block in fast.bridge.blocks)
    eager = load_model(hf_folder[0], device="cpu", fast_attention=False)
    assert not any(sdpa_enabled(block.attn) for block in eager.bridge.blocks)
    tokens = fast.to_tokens("the cat sat on the mat")
    with torch.no_grad():
        assert (fast(tokens) - eager(tokens)).abs().max().item() <= 1e-5
    _, cache = fast.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert cache["blocks.0.attn.hook_pattern"].shape[-1] == tokens.shape[1]  # a watched pattern still fires
