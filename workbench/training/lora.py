"""LoRA fine-tuning through ``peft``: seeded, resumable after a kill, with a merged HF folder.

``finetune(model, rows, out)`` trains low-rank adapters on a fresh float32 copy of the
checkpoint ``model`` was loaded from (``model.source``; the model itself is left as it was),
on the response tokens only: each row's prompt is rendered with the model's chat template (or
Alpaca's prompt format when it has none) and masked out of the loss. ``out`` then holds

- ``adapter/``: the adapters as ``peft`` saves them (``adapter_config.json``, safetensors);
- ``merged/``: the base weights with the adapters merged in, a Hugging Face folder that
  ``wb.load_model`` and ``wb.diff_checkpoints`` read, with the tokenizer, the chat template and
  a copy of the manifest;
- ``finetune.json``: the manifest (base model and fingerprint, data fingerprint, settings,
  losses, versions); ``log.jsonl``: one line per step; ``checkpoint/``: the latest state.

Nothing is pickled: checkpoints are safetensors and JSON. Run the same call again after a
kill and it resumes from the last checkpoint (``save_every`` steps), with the same data order
and, with ``lora_dropout=0``, the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_path, atomic_write, atomic_write_json
from workbench.common.versions import versions
from workbench.models.chat import encode_chat_text, pad_rows
from workbench.training.data import instruction_rows, rows_sha256

# Every linear layer of a LLaMA block, as in QLoRA (Dettmers et al. 2023).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Stanford Alpaca's prompt (no-input form), for models without a chat template.
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n")
MANIFEST = "finetune.json"


class FinetuneError(WorkbenchError, ValueError):
    """Bad fine-tuning arguments, or an ``out`` folder holding a different run."""


@dataclass
class FinetuneResult:
    """A finished fine-tuning run in ``out``.

    Attributes:
        out: the run's folder; ``adapter_dir`` and ``merged_dir`` are inside it.
        manifest: ``finetune.json``: settings, base model, data fingerprint, skipped rows, times.
        log: one row per step: ``step``, ``loss`` (mean over the batch's response tokens),
            ``lr``, ``tokens`` (response tokens in the batch), ``seconds``.
    """

    out: Path
    manifest: dict[str, Any]
    log: pd.DataFrame

    @property
    def adapter_dir(self) -> Path:
        return self.out / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.out / "merged"

    def load_model(self, **kwargs: Any):
        """The fine-tuned model: ``wb.load_model(merged_dir, **kwargs)``."""
        from workbench.models.loading import load_model

        return load_model(self.merged_dir, **kwargs)


def finetune(
    model,
    data: Any,
    out: str | Path,
    *,
    steps: int = 200,
    batch_size: int = 8,
    learning_rate: float = 2e-4,
    warmup_steps: int = 10,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
    max_length: int = 256,
    chat: bool | None = None,
    seed: int = 0,
    save_every: int = 50,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune LoRA adapters on ``data`` and write the adapters and a merged model to ``out``.

    Args:
        model: a loaded ``HookedLlama``; its checkpoint (``model.source``) is re-read in float32,
            so ``model`` is not changed. Its chat template and BOS convention are used.
        data: rows (see :func:`~workbench.training.data.instruction_rows`): a JSON / JSONL
            path or a list of dicts (Alpaca's ``instruction/input/output``, ``prompt/response``).
        out: the run's folder. Calling again with the same arguments resumes an interrupted run
            or returns the finished one; different arguments raise :class:`FinetuneError`.
        steps: optimizer steps (AdamW, gradient norm clipped at 1, linear warm-up then linear
            decay to 0). Rows are drawn without replacement, reshuffled each epoch (seeded).
        batch_size: rows per step.
        lora_rank, lora_alpha, lora_dropout, target_modules: the ``peft.LoraConfig``.
        max_length: tokens per row; longer rows are cut at the end, and a row whose prompt
            fills it is skipped (counted in the manifest's ``skipped_rows``).
        chat: render rows with the chat template (``None``: when the model has one).
        seed: adapter initialisation and data order.
        save_every: steps between checkpoints.

    >>> run = wb.finetune(model, wb.training.benign_alpaca(), "runs/ft", steps=300)  # doctest: +SKIP
    >>> tuned = run.load_model()                                                      # doctest: +SKIP
    """
    from peft import LoraConfig, get_peft_model

    rows = instruction_rows(data)
    _check_numbers(steps=steps, batch_size=batch_size, max_length=max_length, save_every=save_every,
                   lora_rank=lora_rank, learning_rate=learning_rate)
    if warmup_steps < 0:
        raise FinetuneError(f"warmup_steps: must be >= 0, got {warmup_steps}")
    use_chat = model.chat_template is not None if chat is None else bool(chat)
    out = Path(out)
    settings = {
        "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "warmup_steps": warmup_steps,
        "lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "target_modules": list(target_modules), "max_length": max_length, "chat": use_chat, "seed": seed,
        "data_sha256": rows_sha256(rows), "n_rows": len(rows),
        "chat_template": model.chat_template.name if use_chat else None,
        "base": {"format": model.source.format, "path": model.source.path, "name": model.source.name,
                 "fingerprint": model.source.fingerprint},
    }
    finished = _previous_run(out, settings)
    if finished is not None:
        return finished

    examples, skipped = _encode(model, rows, use_chat, max_length)
    if not examples:
        raise FinetuneError(f"data: every row's prompt fills max_length={max_length}; raise max_length")
    base, tokenizer = _fresh_copy(model)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; noise to our users
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, LoraConfig(
            r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
            bias="none", task_type="CAUSAL_LM"))
    trainable = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, steps))
    start = _resume(out / "checkpoint", trainable, optimizer, schedule)
    log = _read_log(out / "log.jsonl", start)
    atomic_write_json(out / MANIFEST, {"status": "running", "settings": settings, "skipped_rows": skipped})

    order = _Order(len(examples), batch_size, seed)
    pad_id = model.pad_token_id
    peft_model.train()
    bar = tqdm(total=steps, initial=start, desc="finetune", unit="step", disable=not progress)
    try:
        for step in range(start, steps):
            began = time.perf_counter()
            batch = [examples[i] for i in order.batch(step)]
            input_ids, labels, mask = _collate(batch, pad_id)
            loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - began
            tokens = int((labels[:, 1:] != -100).sum())
            log.append({"step": step + 1, "loss": float(loss.detach()), "lr": lr, "tokens": tokens, "seconds": seconds})
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(log[-1]) + "\n")
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}")
            bar.update()
            if (step + 1) % save_every == 0 or step + 1 == steps:
                _save_checkpoint(out / "checkpoint", step + 1, trainable, optimizer, schedule)
    finally:
        bar.close()

    peft_model.eval()
    with atomic_path(out / "adapter", directory=True) as tmp:
        peft_model.save_pretrained(tmp)
    merged = peft_model.merge_and_unload()
    if use_chat:
        tokenizer.chat_template = model.chat_template.template
    frame = pd.DataFrame(log)
    manifest = {
        "status": "complete", "settings": settings, "skipped_rows": skipped, "rows_used": len(examples),
        "trainable_parameters": int(sum(p.numel() for p in trainable.values())),
        "first_loss": float(frame["loss"].iloc[0]), "last_loss": float(frame["loss"].iloc[-1]),
        "train_seconds": float(frame["seconds"].sum()), "versions": versions(),
    }
    with atomic_path(out / "merged", directory=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MANIFEST, manifest)  # the folder says where it came from
    atomic_write_json(out / MANIFEST, manifest)
    return FinetuneResult(out, manifest, frame)


def _check_numbers(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise FinetuneError(f"{name}: must be > 0, got {value}")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _previous_run(out: Path, settings: dict[str, Any]) -> FinetuneResult | None:
    """The finished run in ``out`` (None if there is none or it was interrupted); raises when
    ``out`` holds a run with other settings."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    before = manifest.get("settings", {})
    differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if differ:
        changes = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in differ[:4])
        raise FinetuneError(f"{out} holds a fine-tuning run with other settings ({changes}); "
                            f"pass another out= or delete the folder")
    if manifest.get("status") == "complete" and (out / "merged" / "config.json").is_file():
        return FinetuneResult(out, manifest, pd.DataFrame(_read_log(out / "log.jsonl", settings["steps"])))
    return None


def _encode(model, rows: list[dict[str, str]], use_chat: bool, max_length: int) -> tuple[list, int]:
    """Each row -> (token ids, number of prompt tokens); rows with no response token left are skipped."""
    examples, skipped = [], 0
    for row in rows:
        if use_chat:
            user = [{"role": "user", "content": row["prompt"]}]
            prompt = model.chat_tokens(user, add_generation_prompt=True)[0].tolist()
            full = model.chat_tokens(user + [{"role": "assistant", "content": row["response"]}],
                                     add_generation_prompt=False)[0].tolist()
        else:
            text = ALPACA_PROMPT.format(prompt=row["prompt"])
            prompt = encode_chat_text(model.tokenizer, text, model.tokenizer_adds_bos)
            full = encode_chat_text(model.tokenizer, text + row["response"], model.tokenizer_adds_bos)
            full.append(int(model.tokenizer.eos_token_id))
        # The loss starts where the two token sequences part (a tokenizer may merge across the seam).
        n_prompt = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b),
                        min(len(prompt), len(full)))
        full = full[:max_length]
        if n_prompt >= len(full):
            skipped += 1
            continue
        examples.append((full, n_prompt))
    return examples, skipped


def _collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids = pad_rows([ids for ids, _ in batch], pad_id, "right")
    mask = pad_rows([[1] * len(ids) for ids, _ in batch], 0, "right")
    labels = input_ids.clone()
    labels[mask == 0] = -100
    for row, (_, n_prompt) in enumerate(batch):
        labels[row, :n_prompt] = -100
    return input_ids, labels, mask


class _Order:
    """The seeded data order: epoch ``e`` is ``default_rng([seed, e]).permutation(n)``, so the
    rows of any step are known without replaying the ones before it."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epochs: dict[int, np.ndarray] = {}

    def batch(self, step: int) -> list[int]:
        rows = []
        for g in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch = g // self.n
            if epoch not in self._epochs:
                self._epochs = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
            rows.append(int(self._epochs[epoch][g % self.n]))
        return rows


def _fresh_copy(model):
    """A float32 copy of the checkpoint ``model`` was loaded from, with its format's tokenizer."""
    from workbench.models.formats import detect_format, get_format

    source = None if model.source.format == "embedded" else model.source.path
    name, location = detect_format(source)
    hf_model, tokenizer, _ = get_format(name).load(location, dtype=torch.float32, placement=None, verify=False)
    return hf_model.to("cpu"), tokenizer


def _save_checkpoint(folder: Path, step: int, trainable: dict, optimizer, schedule) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    moments = {f"{index}.{key}": value.detach().clone().contiguous()
               for index, entry in state["state"].items() for key, value in entry.items()}
    with atomic_path(folder, directory=True) as tmp:
        save_file({k: v.detach().contiguous() for k, v in trainable.items()}, str(tmp / "adapter.safetensors"))
        save_file({**moments, "torch_rng": torch.get_rng_state()}, str(tmp / "optimizer.safetensors"))
        atomic_write(tmp / "state.json", json.dumps({
            "step": step, "param_groups": state["param_groups"], "schedule": schedule.state_dict()}, default=list))


def _resume(folder: Path, trainable: dict, optimizer, schedule) -> int:
    """Load the checkpoint in ``folder`` into the adapters and the optimizer; its step, or 0."""
    if not (folder / "state.json").is_file():
        return 0
    from safetensors.torch import load_file

    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(folder / "adapter.safetensors"))
    if set(weights) != set(trainable):
        raise FinetuneError(f"{folder}: the checkpoint's adapters do not match this run's; delete the folder")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(weights[name])
    tensors = load_file(str(folder / "optimizer.safetensors"))
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key != "torch_rng":
            index, name = key.split(".", 1)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
    schedule.load_state_dict(meta["schedule"])
    torch.set_rng_state(tensors["torch_rng"])
    return int(meta["step"])


def _read_log(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The log's steps up to ``up_to`` (later lines came after the last checkpoint; dropped)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if row["step"] <= up_to and math.isfinite(row["loss"]):
            kept.append(row)
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in kept))
    return kept
