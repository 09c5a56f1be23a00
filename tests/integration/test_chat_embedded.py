"""Chat templates on the embedded SmolLM2-135M-Instruct: its own template (from the GGUF), token
ids as Hugging Face's apply_chat_template makes them, and chat-formatted log-likelihoods equal to
lm-evaluation-harness's ``--apply_chat_template`` (tokens exactly equal)."""

import numpy as np
import pytest
import torch

from workbench.evals.loglik import encode_pair
from workbench.evals.options import EvalOptions
from workbench.evals.scoring import load_examples, render, score, with_chat
from workbench.evals.suites import load_suite
from workbench.models.chat import token_ids_hash

pytestmark = pytest.mark.integration

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": "  spaces and\nnewlines  "}],
]


@pytest.fixture(scope="module")
def folder_tokenizer(embedded):
    """The tokenizer a user of the converted folder gets from transformers (not the bridge's copy)."""
    from transformers import AutoTokenizer

    from workbench.models.embedded import converted_embedded_model

    return AutoTokenizer.from_pretrained(converted_embedded_model(embedded.source.fingerprint))


def test_the_embedded_template_comes_from_the_gguf(embedded):
    from workbench.models.embedded import embedded_gguf_path
    from workbench.models.gguf_format import read_gguf_chat_template

    template = embedded.chat_template
    assert template.name == "SmolLM2-135M-Instruct"
    assert template.source == f"GGUF metadata tokenizer.chat_template ({embedded_gguf_path()})"
    assert template.template == read_gguf_chat_template(embedded_gguf_path())
    assert "You are a helpful AI assistant named SmolLM" in template.template
    assert embedded.info()["chat_template_source"] == template.source


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_tokens_equal_hf_apply_chat_template(embedded, folder_tokenizer, add_generation_prompt):
    for conversation in CONVERSATIONS:
        text = folder_tokenizer.apply_chat_template(conversation, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt)
        ids = folder_tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False,
                                                   add_generation_prompt=add_generation_prompt)
        assert embedded.format_chat(conversation, add_generation_prompt=add_generation_prompt) == text
        assert embedded.chat_tokens(conversation, add_generation_prompt=add_generation_prompt)[0].tolist() == list(ids)
    # the text begins with the BOS string (<|im_start|>): no BOS is added in front of it
    ids = embedded.chat_tokens(CONVERSATIONS[0])[0].tolist()
    assert ids[0] == folder_tokenizer.bos_token_id and ids[1] != folder_tokenizer.bos_token_id
    assert torch.equal(embedded.to_tokens(CONVERSATIONS[0]), embedded.chat_tokens(CONVERSATIONS[0]))


def test_generate_a_reply_as_hf_does(embedded):
    ids = embedded.chat_tokens(CONVERSATIONS[0])
    reply = embedded.generate(CONVERSATIONS[0], max_new_tokens=8, include_prompt=False)
    with torch.no_grad():
        out = embedded.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                         do_sample=False, eos_token_id=embedded.tokenizer.eos_token_id)
    assert reply == embedded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.strip()


def test_chat_logliks_equal_lm_evaluation_harness(embedded, folder_tokenizer, data_dir):
    """lm-eval 0.4.13 builds the requests itself (ConfigurableTask.fewshot_context and
    construct_requests with apply_chat_template=True, HFLM.apply_chat_template) from the same
    plain prompts; its contexts, token ids and per-choice log-likelihoods equal ours."""
    pytest.importorskip("lm_eval")
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=embedded.hf_model, tokenizer=folder_tokenizer, batch_size=4, device="cpu")
    for suite, n, system in (("winogender", 3, "Resolve the pronoun."), ("true_false_facts", 3, None)):
        spec = load_suite(suite)
        options = EvalOptions(data_dir=data_dir, chat=True, system_prompt=system, progress=False)
        examples = load_examples(spec, options)[0].head(n)
        ours = score(embedded, with_chat(spec, embedded, options), examples)
        docs = []
        for example in examples.to_dict("records"):
            context, lists = render(spec, example)
            delim = spec.prompt.get("delimiter", " ")
            docs.append({"context": context, "choices": [c[len(delim):] for c in lists[0]], "label": 0})
        task = ConfigurableTask(config={
            "task": f"workbench_{suite}_chat", "test_split": "test", "output_type": "multiple_choice",
            "custom_dataset": lambda docs=docs, **kwargs: DatasetDict({"test": Dataset.from_list(docs)}),
            "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "label",
            "target_delimiter": spec.prompt.get("delimiter", " "), "num_fewshot": 0,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]})
        task.build_all_requests(apply_chat_template=True, chat_template=lm.apply_chat_template,
                                system_instruction=system)
        instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
        assert [i.args for i in instances] == [(c, x) for c, xs in zip(ours.context, ours.choices, strict=True)
                                               for x in xs]
        for inst in instances:  # token ids exactly equal: one BOS-free chat prefix, no double BOS
            context_ids, continuation_ids = lm._encode_pair(*inst.args)
            enc = encode_pair(embedded.tokenizer, *inst.args, add_bos=embedded.tokenizer_adds_bos, specials_in_text=True)
            assert (enc.context, enc.continuation) == (tuple(context_ids), tuple(continuation_ids))
            assert ours.prompt_ids_sha256[inst.doc_id] == token_ids_hash(context_ids)
        ref = lm.loglikelihood(instances, disable_tqdm=True)
        ours_ll = np.concatenate([np.asarray(x) for x in ours.loglik])
        np.testing.assert_allclose(ours_ll, [ll for ll, _ in ref], atol=1e-3, rtol=0)
