"""Tiny random LLaMA models and word-level tokenizers written as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ("the cat sat on a mat and dog ran to house red blue green is was of in it "
         "capital france paris rome italy berlin germany what q a : ? . ,").split()
SPECIALS = ["<unk>", "<s>", "</s>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``WORDS`` that prepends ``<s>`` like LLaMA's."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_config(vocab_size: int, **overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_llama(seed: int = 0, **overrides) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(len(tokenizer), **overrides)).eval()
    # Random init gives near-uniform outputs; larger weights make logit comparisons meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model, tokenizer


def write_hf_folder(folder: Path, seed: int = 0, safe_serialization: bool = True, **overrides):
    """Save a tiny model + tokenizer to ``folder``; returns the in-memory model (eager attention)."""
    model, tokenizer = tiny_llama(seed, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    model.config._attn_implementation = "eager"
    return model
