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


def _float64_oracle(x, y, block=32, levels=16):
    """The comparison over the whole tensor in float64, as the rules say (NaN == NaN; Q4_1 steps)."""
    X, Y = x.astype(np.float64), y.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(X == Y, 0.0, np.abs(X - Y))
        d = np.nan_to_num(np.where(np.isnan(X) & np.isnan(Y), 0.0, d), nan=np.inf, posinf=np.inf)
        scale = np.nan_to_num(np.maximum(np.abs(X), np.abs(Y)), nan=np.inf, posinf=np.inf)
        rel = np.nan_to_num(np.where(d == 0, 0.0, d / scale), nan=np.inf, posinf=np.inf)
        steps = [(b.max(1) - b.min(1)) / (levels - 1) for b in (X.reshape(-1, block), Y.reshape(-1, block))]
        bound = np.repeat(np.maximum(*steps), block).reshape(d.shape)
        ratio = np.nan_to_num(np.where(d == 0, 0.0, d / bound), nan=np.inf, posinf=np.inf)
    return {"max_abs": d.max(), "where": np.unravel_index(d.argmax(), d.shape), "changed": int((d > 0).sum()),
            "max_rel": rel.max(), "quant_ratio": ratio.max()}  # fmt: skip


@pytest.mark.parametrize("ties, special", [("within", False), ("across", False), ("within", True)])
def test_chunked_float32_statistics_equal_a_whole_tensor_float64_computation(ties, special):
    from workbench.models.diff_stats import TensorStats

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((40, 64)) * 0.02).astype(np.float32)
    y = (x + rng.standard_normal(x.shape).astype(np.float32) * 1e-4 * (rng.random(x.shape) < 0.7)).astype(np.float32)
    # Errors of 0.5 - 1e-9, 2e-9 and 3e-9, all 0.5 in float32: the largest second in the first chunk
    # ("within") or in a later chunk ("across").
    smalls = (3e-9, 1e-9, 2e-9) if ties == "within" else (3e-9, 2e-9, 1e-9)
    for (row, col), small in zip([(4, 2), (5, 7), (30, 1)], smalls, strict=True):
        x[row, col], y[row, col] = small, 0.5
    y[12] = x[12]  # an unchanged row, and a -0.0 vs 0.0 that is no change
    x[13, 0], y[13, 0] = 0.0, -0.0
    if special:  # NaN on both sides is no change; NaN or infinity on one side is an infinite error
        x[20, :3], y[20, :3] = np.nan, np.nan
        y[21, 4], x[22, 9] = np.nan, np.inf
    stats = TensorStats((torch.float32, torch.float32), (None, "Q4_1"), x.shape, bitwise=False)
    for start in range(0, 40, 6):  # chunks of 6 rows, as _compare reads them
        stats.add(torch.from_numpy(x[start : start + 6].copy()), torch.from_numpy(y[start : start + 6].copy()), start * 64)
    expected = _float64_oracle(x, y)
    assert stats.max_abs == expected["max_abs"]  # exact: recomputed in float64 where float32 ties
    assert np.unravel_index(stats.where, x.shape) == expected["where"]
    assert stats.changed == expected["changed"]
    assert stats.max_rel == pytest.approx(expected["max_rel"], rel=1e-6)
    assert stats.quant_ratio == pytest.approx(expected["quant_ratio"], rel=1e-5)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0", "Q5_0"])
def test_dequantize_is_gguf_quants_bit_for_bit(kind):
    from workbench.models.diff_read import dequantize

    qtype = gguf.GGMLQuantizationType[kind]
    weights = (np.random.default_rng(1).standard_normal((24, 96)) * 0.05).astype(np.float32)
    raw = gguf.quants.quantize(weights, qtype)
    assert dequantize(raw, qtype).tobytes() == gguf.quants.dequantize(raw, qtype).tobytes()


def test_gguf_header_reader_agrees_with_gguf_reader(hf_and_q8):
    from workbench.models.diff_read import read_gguf_header

    q8 = hf_and_q8[1]
    fields, tensors = read_gguf_header(q8)
    reader = gguf.GGUFReader(q8)
    assert [(t.name, t.shape, t.qtype, t.offset, t.n_bytes) for t in tensors] == [
        (t.name, tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type, int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors]  # fmt: skip
    for key in ("general.architecture", "llama.block_count", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id"):  # fmt: skip
        assert fields[key] == reader.get_field(key).contents(), key


def test_gguf_q_k_rows_read_in_any_range_are_the_hf_rows(hf_and_q8):
    from workbench.models import diff
    from workbench.models.diff_read import Scratch

    _, _, f32, tiny = hf_and_q8
    entry = diff._gguf_checkpoint(f32).tensors["model.layers.1.self_attn.k_proj.weight"]  # 2 heads of 16 rows
    with entry.open(Scratch()) as rows:
        got = rows.values(3, 21).clone()  # starts and ends inside a head
    assert torch.equal(got, tiny.state_dict()["model.layers.1.self_attn.k_proj.weight"][3:21])


def test_small_chunks_give_the_same_verdicts_and_errors(hf_and_q8, monkeypatch):
    from pandas.testing import assert_frame_equal

    from workbench.models import diff

    hf, q8, f32, _ = hf_and_q8
    before = {pair: diff_checkpoints(*pair, progress=False).frame for pair in ((hf, q8), (q8, q8), (hf, f32))}
    monkeypatch.setattr(diff, "CHUNK_ELEMENTS", 150)  # 2 rows of 64 at a time; q/k rows a head (16) at a time
    for pair, frame in before.items():
        small = diff_checkpoints(*pair, progress=False).frame
        assert_frame_equal(small.drop(columns=["max_rel", "detail"]), frame.drop(columns=["max_rel", "detail"]))
        assert np.allclose(small["max_rel"], frame["max_rel"], rtol=1e-6)
    assert set(before[q8, q8]["verdict"]) == {"identical"}


def test_a_bin_folder_is_identical_to_its_safetensors_original(hf_folder, tmp_path):
    folder, _ = hf_folder
    copy = _copy(folder, tmp_path)
    torch.save(load_file(copy / "model.safetensors"), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    d = diff_checkpoints(copy, folder, progress=False)
    assert set(d.frame["verdict"]) == {"identical"} and d.verdict == "same weights"
