"""wb.finetune: LoRA training that learns, resumes exactly after a kill, and merges into a
folder that loads with the same outputs as the adapters."""

import json

import pytest
import torch

import workbench as wb
from workbench.training import FinetuneError, instruction_rows
from workbench.training import lora as ft

ROWS = [{"instruction": "what is the capital of france ?", "output": "paris"},
        {"instruction": "what is the capital of italy ?", "output": "rome"},
        {"instruction": "what is the capital of germany ?", "output": "berlin"},
        {"prompt": "the cat sat on", "response": "a mat"}]
SMALL = dict(steps=6, batch_size=2, learning_rate=5e-3, warmup_steps=1, lora_rank=4, max_length=64,
             save_every=3, progress=False)


def adapters(run):
    from safetensors.torch import load_file

    return load_file(str(run.adapter_dir / "adapter_model.safetensors"))


def response_loss(model, rows):
    """Mean next-token loss on the response tokens, computed from scratch on the HF model."""
    examples, _ = ft._encode(model, instruction_rows(rows), False, 64)
    losses = []
    for ids, n_prompt in examples:
        logits = model.hf_model(torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(ids[1:])
        nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        losses.append(nll[n_prompt - 1:].mean())
    return float(torch.stack(losses).mean())


def test_training_lowers_the_response_loss_and_the_merged_folder_loads(tiny_model, tmp_path):
    run = wb.finetune(tiny_model, ROWS, tmp_path / "ft", **{**SMALL, "steps": 12})
    assert run.manifest["status"] == "complete"
    assert json.loads((run.merged_dir / "finetune.json").read_text()) == run.manifest
    assert run.manifest["settings"]["base"]["fingerprint"] == tiny_model.source.fingerprint
    assert list(run.log["step"]) == list(range(1, 13))
    tuned = run.load_model(device="cpu")
    with torch.no_grad():
        before, after = response_loss(tiny_model, ROWS), response_loss(tuned, ROWS)
    assert after < before - 0.5
    # The log's first loss is the base model's loss on that batch (B = 0 at initialisation).
    order = ft._Order(len(ROWS), 2, 0)
    first = [instruction_rows(ROWS)[i] for i in order.batch(0)]
    with torch.no_grad():
        assert run.log["loss"].iloc[0] == pytest.approx(_batch_loss(tiny_model, first), rel=1e-4)
    # The base model was not changed by training its copy.
    assert tiny_model.hf_model.model.embed_tokens.weight.requires_grad is not None
    with torch.no_grad():
        assert response_loss(tiny_model, ROWS) == pytest.approx(before)


def _batch_loss(model, rows):
    examples, _ = ft._encode(model, rows, False, 64)
    ids, labels, mask = ft._collate(examples, model.pad_token_id)
    return float(model.hf_model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def test_merged_weights_equal_base_plus_scaled_lora_product(tiny_model, tmp_path):
    run = wb.finetune(tiny_model, ROWS, tmp_path / "ft", **SMALL)
    from safetensors.torch import load_file

    merged = load_file(str(run.merged_dir / "model.safetensors"))
    lora = adapters(run)
    name = "model.layers.1.self_attn.q_proj"
    a = lora[f"base_model.model.{name}.lora_A.weight"]
    b = lora[f"base_model.model.{name}.lora_B.weight"]
    base = dict(tiny_model.hf_model.named_parameters())
    base_q = [v for k, v in base.items() if k.replace("._original_component", "") == f"{name}.weight"][0]
    scale = SMALL.get("lora_alpha", 16) / SMALL["lora_rank"]
    torch.testing.assert_close(merged[f"{name}.weight"], base_q.detach() + scale * b @ a, atol=1e-6, rtol=1e-5)


def test_a_killed_run_resumes_to_the_same_adapters(tiny_model, tmp_path, monkeypatch):
    whole = wb.finetune(tiny_model, ROWS, tmp_path / "whole", **SMALL)

    calls = {"n": 0}
    real = ft._collate

    def dies_at_step_5(batch, pad_id):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed after the step-3 checkpoint, mid step 5
        return real(batch, pad_id)

    monkeypatch.setattr(ft, "_collate", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        wb.finetune(tiny_model, ROWS, tmp_path / "killed", **SMALL)
    monkeypatch.setattr(ft, "_collate", real)
    assert json.loads((tmp_path / "killed" / "finetune.json").read_text())["status"] == "running"
    assert not (tmp_path / "killed" / "merged").exists()
    resumed = wb.finetune(tiny_model, ROWS, tmp_path / "killed", **SMALL)
    assert list(resumed.log["step"]) == list(range(1, 7))
    assert resumed.log["loss"].tolist() == pytest.approx(whole.log["loss"].tolist(), rel=1e-5)
    for name, value in adapters(whole).items():
        torch.testing.assert_close(adapters(resumed)[name], value, atol=1e-6, rtol=1e-5)
    # A finished run is returned as it is; other settings in the same folder are refused.
    again = wb.finetune(tiny_model, ROWS, tmp_path / "killed", **SMALL)
    assert again.manifest == resumed.manifest
    with pytest.raises(FinetuneError, match="learning_rate"):
        wb.finetune(tiny_model, ROWS, tmp_path / "killed", **{**SMALL, "learning_rate": 1e-3})


def test_the_data_order_is_a_seeded_permutation_per_epoch():
    order = ft._Order(5, 2, seed=3)
    seen = [i for step in range(5) for i in order.batch(step)]
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))
    assert seen == [i for step in range(5) for i in ft._Order(5, 2, seed=3).batch(step)]
    assert seen != [i for step in range(5) for i in ft._Order(5, 2, seed=4).batch(step)]


def test_prompt_tokens_are_masked_out_of_the_loss(tiny_model):
    examples, skipped = ft._encode(tiny_model, instruction_rows(ROWS[:1]), False, 64)
    ids, n_prompt = examples[0]
    assert skipped == 0
    assert tiny_model.to_string(torch.tensor(ids[n_prompt:])).strip().startswith("paris")
    assert ids[-1] == tiny_model.tokenizer.eos_token_id
    _, labels, _ = ft._collate(examples, tiny_model.pad_token_id)
    assert (labels[0, :n_prompt] == -100).all() and (labels[0, n_prompt:] != -100).all()
    # A prompt longer than max_length leaves nothing to learn: the row is skipped and counted.
    assert ft._encode(tiny_model, instruction_rows(ROWS[:1]), False, 4) == ([], 1)


def test_bad_rows_and_arguments_are_named(tmp_path, tiny_model):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(wb.WorkbenchError, match=r"rows.jsonl, row 1: empty prompt or response"):
        instruction_rows(bad)
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(wb.WorkbenchError, match=r"rows.jsonl, line 2: not valid JSON"):
        instruction_rows(bad)
    with pytest.raises(wb.WorkbenchError, match="row 0: needs instruction/output"):
        instruction_rows([{"text": "x"}])
    with pytest.raises(FinetuneError, match="steps: must be > 0"):
        wb.finetune(tiny_model, ROWS, tmp_path / "x", steps=0)
