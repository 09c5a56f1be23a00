"""The embedded SmolLM2-135M-Instruct model, end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from workbench.models import embedded as emb
from workbench.models.loading import load_model
from workbench.models.verify import checkpoint_fingerprint

pytestmark = pytest.mark.integration


def test_logits_equal_hf_on_same_weights(embedded):
    # The default (fused) attention against HF's default SDPA attention, the eager path
    # (model.eager_attention()) against HF's eager attention.
    folder = embedded.hf_model.config._name_or_path
    sdpa = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    tokens = embedded.to_tokens(["The capital of France is Paris, and the capital of Italy is"])
    with torch.no_grad():
        assert embedded.fast_attention
        assert (embedded(tokens) - sdpa(tokens).logits).abs().max().item() <= 1e-4
    reference = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad(), embedded.eager_attention():
        assert (embedded(tokens) - reference(tokens).logits).abs().max().item() <= 1e-4


def test_architecture_is_smollm2(embedded):
    info = embedded.info()
    assert (info["n_layers"], info["d_model"], info["n_heads"], info["n_kv_heads"]) == (30, 576, 9, 3)
    assert info["format"] == "embedded" and info["name"] == "SmolLM2-135M-Instruct"
    assert 134_000_000 < info["n_params"] < 136_000_000


def test_run_with_cache_returns_every_catalogued_hook_with_its_shape(embedded):
    catalogue = embedded.hook_catalogue()
    text = "The capital of France is"
    n_pos = len(embedded.to_str_tokens(text))
    _, cache = embedded.run_with_cache(text)
    assert list(cache.keys()) == list(catalogue["name"])
    sizes = {"batch": 1, "pos": n_pos, "d_model": 576, "d_mlp": 1536, "d_vocab": 49152,
             "n_heads": 9, "n_kv_heads": 3, "d_head": 64, "1": 1}
    for row in catalogue.itertuples():
        expected = tuple(sizes[d] for d in row.shape.strip("[]").split(", "))
        assert tuple(cache[row.name].shape) == expected, row.name
    assert len(catalogue) == 1393


def test_generates_the_right_answer(embedded):
    answer = embedded.generate("Q: What is the capital of France?\nA:", max_new_tokens=8, include_prompt=False)
    assert "Paris" in answer


def test_conversion_cache_survives_a_killed_writer(tmp_path, monkeypatch):
    """A half-written conversion (killed process) is ignored and replaced by a whole one."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    fingerprint = checkpoint_fingerprint(emb.embedded_gguf_path())
    target = tmp_path / f"{emb.EMBEDDED_NAME}-{fingerprint[:16]}"
    # Kill a conversion mid-write, deterministically: the child SIGKILLs itself when it is about
    # to rename its finished temporary folder into place (or earlier, at any os.replace).
    script = ("import os, signal\n"
              "os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "from workbench.models.embedded import converted_embedded_model as c\n"
              f"c({fingerprint!r})\n")
    child = subprocess.run([sys.executable, "-c", script], env={**os.environ, "WORKBENCH_CACHE": str(tmp_path)},
                           capture_output=True, timeout=600)
    assert child.returncode == -9
    assert list(tmp_path.glob("*.tmp-*"))  # it left a half-finished folder behind
    assert not (target / "COMPLETE").exists()
    folder = emb.converted_embedded_model(fingerprint, progress=False)
    assert folder == target and (folder / "COMPLETE").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
    model = load_model(device="cpu")
    assert model.hf_model.config._name_or_path == str(target)


def test_second_load_uses_the_cache(embedded, monkeypatch):
    calls = []
    import workbench.models.gguf_format as gguf_format

    monkeypatch.setattr(gguf_format, "load_gguf", lambda *a, **k: calls.append(a))
    again = load_model(device="cpu")
    assert calls == []  # no re-dequantization
    assert Path(again.hf_model.config._name_or_path).name.startswith(emb.EMBEDDED_NAME)


def test_demo_runs(capsys):
    from workbench.cli import main

    assert main(["demo", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "blocks.29" not in out and "residual stream norms" in out
