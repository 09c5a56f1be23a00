"""load_model on Meta's release format: checklist, provenance, tokens and logits end to end."""

import hashlib

import pytest
import sentencepiece as spm
import torch
from meta_checkpoint import reference_forward, write_meta_checkpoint

from workbench.cli import main
from workbench.common.errors import ChecksumError
from workbench.models.loading import load_model


@pytest.fixture(scope="module")
def meta_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "7B"
    ref = write_meta_checkpoint(folder, n_shards=2, llama2=True, seed=5)
    # As Meta ships it: checklist.chk with the md5 of each file in the folder.
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir())]
    (folder / "checklist.chk").write_text("\n".join(lines) + "\n")
    return folder, ref


def test_load_model_meta_end_to_end(meta_folder):
    folder, ref = meta_folder
    model = load_model(folder, device="cpu")
    info = model.info()
    assert info["format"] == "meta" and info["checksum_status"] == "verified"
    assert info["detail.shards"] == 2 and info["n_layers"] == ref["params"]["n_layers"]
    text = "The quick brown fox.\nÉté 🙂"
    sp = spm.SentencePieceProcessor(model_file=str(ref["tokenizer_path"]))
    tokens = model.to_tokens(text)
    assert tokens[0].tolist() == [sp.bos_id()] + sp.encode(text)
    expected = reference_forward(ref["weights"], ref["params"], tokens)
    with torch.no_grad():
        assert (model(tokens) - expected).abs().max().item() <= 1e-5
    _, cache = model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")
    assert len(cache) == ref["params"]["n_layers"]


def test_meta_checklist_mismatch_blocks_loading(meta_folder, tmp_path):
    import shutil

    folder = tmp_path / "7B"
    shutil.copytree(meta_folder[0], folder)
    shard = folder / "consolidated.01.pth"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="consolidated.01.pth: mismatch"):
        load_model(folder, device="cpu")
    assert main(["verify", str(folder)]) == 1
    assert main(["verify", str(meta_folder[0])]) == 0


@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_device_map_is_applied_to_converted_formats(meta_folder, device_map):
    folder, ref = meta_folder
    model = load_model(folder, device_map=device_map)
    assert set(model.hf_model.hf_device_map.values()) <= {"cpu", 0, "cuda:0"}
    tokens = model.to_tokens("The quick brown fox.")
    with torch.no_grad():
        assert (model(tokens) - reference_forward(ref["weights"], ref["params"], tokens)).abs().max() <= 1e-5
