"""``diff_checkpoints`` / ``workbench diff``: the same weights in other formats, quantized, edited."""

from __future__ import annotations

import json
import shutil

import gguf
import gguf_checkpoint as gc
import numpy as np
import pytest
import torch
from meta_checkpoint import write_meta_checkpoint
from safetensors.torch import load_file, save_file

from workbench.cli import main
from workbench.common.errors import CheckpointError
from workbench.models.diff import diff_checkpoints


def _copy(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


@pytest.fixture(scope="module")
def meta_and_hf(tmp_path_factory):
    """The same tiny weights as two Meta shards and as an HF folder (written from the loaded model)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from workbench.models.meta import load_meta_checkpoint

    root = tmp_path_factory.mktemp("diff-meta")
    ckpt = write_meta_checkpoint(root / "meta", n_shards=2, llama2=True)
    model, _ = load_meta_checkpoint(ckpt["folder"])
    model.save_pretrained(root / "hf")
    sp = spm.SentencePieceProcessor(model_file=str(ckpt["tokenizer_path"]))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    backend = Tokenizer(models.BPE(vocab, [], byte_fallback=True, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(root / "hf")  # fmt: skip
    return ckpt["folder"], root / "hf", model


@pytest.fixture(scope="module")
def hf_and_q8(tmp_path_factory):
    """An HF folder and a Q8_0 GGUF written from it with gguf's own quantizer."""
    from workbench.models.gguf_format import load_gguf

    root = tmp_path_factory.mktemp("diff-gguf")
    tiny = gc.tiny_llama(seed=3)
    gc.write_tiny_gguf(root / "f32.gguf", tiny)
    _, tokenizer = load_gguf(root / "f32.gguf")  # the GGUF's vocabulary as an HF tokenizer
    tiny.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    gc.write_tiny_gguf(root / "q8.gguf", tiny, tensor_type="Q8_0")
    return root / "hf", root / "q8.gguf", root / "f32.gguf", tiny


def test_meta_shards_and_hf_folder_are_identical(meta_and_hf):
    meta_folder, hf, model = meta_and_hf
    d = diff_checkpoints(meta_folder, hf, progress=False)
    assert (d.format_a, d.format_b) == ("meta", "hf")
    assert set(d.frame["verdict"]) == {"identical"} and len(d.frame) == 2 * 9 + 3
    saved = load_file(hf / "model.safetensors")  # oracle: the loaded tensors are equal
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert d.tokenizer.same, d.tokenizer
    assert d.verdict == "same weights" and d.same


def test_hf_and_f32_gguf_are_identical(hf_and_q8):
    hf, _, f32, _ = hf_and_q8
    d = diff_checkpoints(hf, f32, progress=False)
    assert d.verdict == "same weights", d.frame
    assert d.tokenizer.merges_same is True


def test_q8_0_gguf_is_equal_within_q8_0(hf_and_q8):
    hf, q8, _, tiny = hf_and_q8
    d = diff_checkpoints(hf, q8, progress=False)
    frame = d.frame.set_index("name")
    matrices = [n for n, p in tiny.state_dict().items() if p.dim() == 2]
    assert set(frame.loc[matrices, "verdict"]) == {"equal_within_quantization"}
    assert set(frame.drop(index=matrices)["verdict"]) == {"identical"}  # norms stay F32
    assert frame.loc[matrices, "detail"].str.startswith("Q8_0:").all()
    assert d.verdict == "same within Q8_0 quantization" and d.same
    # Oracle: dequantize one tensor by hand (down_proj: not permuted) and take the max error.
    name = "model.layers.1.mlp.down_proj.weight"
    tensor = next(t for t in gguf.GGUFReader(q8).tensors if t.name == "blk.1.ffn_down.weight")
    dequantized = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    exact = tiny.state_dict()[name].double().numpy()
    expected = np.abs(exact - dequantized.astype(np.float64)).max()
    assert frame.loc[name, "max_abs"] == pytest.approx(expected, rel=1e-12)
    # and the bound: every element is within one Q8_0 step (max |x| / 127 of its block of 32)
    step = np.abs(exact.reshape(-1, 32)).max(1) / 127
    assert (np.abs(exact - dequantized).reshape(-1, 32).max(1) <= step).all()


def test_an_edited_tensor_is_named_with_its_location_and_error(hf_folder, tmp_path):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    weights = load_file(copy / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    original = weights[name].clone()
    weights[name][3, 5] += 0.5
    weights[name][7, 1] -= 0.25
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    d = diff_checkpoints(folder, copy, progress=False)
    frame = d.frame.set_index("name")
    row = frame.loc[name]
    assert row["verdict"] == "different" and row["where"] == (3, 5)
    assert row["max_abs"] == pytest.approx((weights[name].double() - original.double()).abs().max().item(), rel=1e-12)
    assert row["changed"] == pytest.approx(2 / original.numel())
    assert set(frame.drop(index=name)["verdict"]) == {"identical"}
    assert not d.same and d.verdict == f"different: 1 tensor ({name})"
    assert main(["diff", str(folder), str(copy)]) == 1
    assert diff_checkpoints(folder, copy, atol=0.5, progress=False).frame.set_index("name").loc[name, "verdict"] == (
        "equal_within_tolerance")


def test_a_dtype_conversion_is_within_tolerance_and_says_so(hf_folder, tmp_path):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    weights = load_file(copy / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, copy / "model.safetensors", metadata={"format": "pt"})
    d = diff_checkpoints(folder, copy, progress=False)
    assert set(d.frame["verdict"]) <= {"equal_within_tolerance", "identical"}
    assert d.verdict == "same within tolerance (float32 vs bfloat16)"


def test_a_tokenizer_difference_is_detected(hf_folder, tmp_path):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    spec = json.loads((copy / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    cat = vocab.pop("cat")
    vocab["kat"] = cat
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    d = diff_checkpoints(folder, copy, progress=False)
    assert set(d.frame["verdict"]) == {"identical"}
    assert not d.tokenizer.same and d.tokenizer.differing == 1
    assert d.tokenizer.examples == [(cat, "cat", "kat")]
    assert not d.same and d.verdict.startswith("different: tokenizer (")


def test_missing_tensor_and_shape_mismatch(hf_folder, tmp_path):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    weights = load_file(copy / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    frame = diff_checkpoints(folder, copy, progress=False).frame.set_index("name")
    assert frame.loc["model.layers.0.mlp.up_proj.weight", "verdict"] == "missing_in_b"
    assert frame.loc["model.norm.weight", "verdict"] == "shape_mismatch"


@pytest.mark.parametrize("damaged", ["model.safetensors", "gguf"])
def test_a_truncated_file_is_named_and_exits_2(hf_folder, hf_and_q8, tmp_path, damaged, capsys):
    folder, _ = hf_folder
    if damaged == "gguf":
        bad = tmp_path / "q8.gguf"
        data = hf_and_q8[1].read_bytes()
        bad.write_bytes(data[: len(data) - 1000])
        other = hf_and_q8[0]
    else:
        copy = _copy(folder, tmp_path)
        bad = copy / damaged
        bad.write_bytes(bad.read_bytes()[:-4096])
        other = folder
    with pytest.raises(CheckpointError, match=str(bad)):
        diff_checkpoints(other, bad.parent if damaged != "gguf" else bad, progress=False)
    assert main(["diff", str(other), str(bad.parent if damaged != "gguf" else bad)]) == 2
    assert bad.name in capsys.readouterr().out.replace("\n", "")


def test_cli_exit_codes_and_json(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    out = tmp_path / "diff.json"
    assert main(["diff", str(folder), str(copy), "--json", str(out)]) == 0
    assert "same weights" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["same"] and saved["verdict"] == "same weights" and len(saved["tensors"]) == 3 * 9 + 3
    assert main(["diff", str(folder), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().out.replace("\n", "")
