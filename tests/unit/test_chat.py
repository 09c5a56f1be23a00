"""Chat templates: rendering (against Hugging Face's apply_chat_template and hand-written
formats), exactly one BOS, template resolution, errors, and chat-formatted log-likelihood evals."""

import shutil

import pytest
import torch
from tiny_hf import tiny_tokenizer

from workbench.evals.loglik import encode_pair, loglikelihood
from workbench.evals.options import EvalOptions
from workbench.evals.scoring import load_examples, render, run_loglik, score, with_chat
from workbench.evals.suites import load_suite
from workbench.models.chat import (
    BUILTIN_TEMPLATES,
    ChatMessageError,
    ChatTemplateError,
    NoChatTemplateError,
    get_chat_template,
    resolve_chat_template,
    token_ids_hash,
)
from workbench.models.hooked import ModelSource

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]

# Hand-written, for the tiny tokenizer's <s> / </s>.
EXPECTED = {
    # Meta's chat_completion: "[INST] {(B_SYS + system + E_SYS + user).strip()} [/INST] {answer.strip()} "
    # between BOS and EOS per exchange, then BOS "[INST] {last.strip()} [/INST]".
    "llama2-chat": "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"
                   " Paris. </s><s>[INST] And of Italy? [/INST]",
    # Meta's LLaMA 3 ChatFormat: <|begin_of_text|>, a header per message, content stripped, <|eot_id|>.
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
              "<|im_start|>assistant\n",
}

# Newlines after block tags and indentation before them: trim_blocks / lstrip_blocks decide.
CUSTOM = "{% for m in messages %}\n  {% if m['role'] == 'system' %}\n[{{ m['content'] }}]\n  {% else %}\n{{ m['role'] }}: {{ m['content'] }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}"


@pytest.fixture
def chat_model(tiny_model):
    """The tiny model, with whatever template a test sets removed again afterwards."""
    yield tiny_model
    tiny_model.set_chat_template(None)


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
def test_builtins_render_the_hand_written_formats(chat_model, name):
    chat_model.set_chat_template(name)
    assert chat_model.chat_template.name == name and chat_model.chat_template.source == "built-in"
    assert chat_model.format_chat(CONVERSATION) == EXPECTED[name]


@pytest.mark.parametrize("template", [*BUILTIN_TEMPLATES.values(), CUSTOM])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_hugging_face_apply_chat_template(chat_model, template, add_generation_prompt):
    chat_model.set_chat_template(template)
    ref = tiny_tokenizer().apply_chat_template(CONVERSATION, chat_template=template, tokenize=False,
                                               add_generation_prompt=add_generation_prompt)
    assert chat_model.format_chat(CONVERSATION, add_generation_prompt=add_generation_prompt) == ref


def test_a_jinja_string_a_str_message_and_system(chat_model):
    chat_model.set_chat_template(CUSTOM)
    assert chat_model.chat_template.name == "custom" and chat_model.chat_template.source == "string"
    assert chat_model.format_chat(CONVERSATION) == (
        "[You are terse.]\nuser: What is the capital of France?\nassistant: Paris.\nuser: And of Italy?\nassistant:")
    assert chat_model.format_chat("the cat", system="Be kind.") == "[Be kind.]\nuser: the cat\nassistant:"
    assert chat_model.format_chat("the cat", add_generation_prompt=False) == "user: the cat\n"


def test_exactly_one_bos(chat_model):
    tok, bos = chat_model.tokenizer, chat_model.tokenizer.bos_token_id
    assert chat_model.tokenizer_adds_bos  # the tiny checkpoint's tokenizer prepends <s>
    # llama2-chat's text starts with "<s>": that BOS only, none added.
    chat_model.set_chat_template("llama2-chat")
    ids = chat_model.chat_tokens(CONVERSATION)[0].tolist()
    body = tok(EXPECTED["llama2-chat"], add_special_tokens=False)["input_ids"]
    assert ids == body and ids[0] == bos and ids[1] != bos
    assert ids.count(bos) == 2  # one per exchange, as Meta's format has it
    # chatml's text has no BOS: the checkpoint's tokenizer would prepend one, so one is prepended.
    chat_model.set_chat_template("chatml")
    ids = chat_model.chat_tokens(CONVERSATION)[0].tolist()
    assert ids == [bos] + tok(EXPECTED["chatml"], add_special_tokens=False)["input_ids"]
    assert ids.count(bos) == 1


def test_to_tokens_takes_conversations(chat_model):
    chat_model.set_chat_template("chatml")
    one = chat_model.chat_tokens(CONVERSATION)
    assert one.dtype == torch.long and one.shape[0] == 1
    assert torch.equal(chat_model.to_tokens(CONVERSATION), one)
    short = [{"role": "user", "content": "the cat sat"}]
    both = chat_model.to_tokens([CONVERSATION, short])
    n = chat_model.chat_tokens(short).shape[1]
    assert both.shape == (2, one.shape[1]) and torch.equal(both[0], one[0])
    assert torch.equal(both[1, :n], chat_model.chat_tokens(short)[0])
    assert (both[1, n:] == chat_model.tokenizer.pad_token_id).all()
    assert chat_model.to_str_tokens(short) == chat_model.to_str_tokens(chat_model.chat_tokens(short)[0])
    # plain text is unchanged
    assert torch.equal(chat_model.to_tokens("the cat"), chat_model.bridge.to_tokens("the cat"))


def test_generate_answers_a_conversation(chat_model):
    chat_model.set_chat_template("chatml")
    short = [{"role": "user", "content": "the cat sat"}]
    prompt = chat_model.chat_tokens(short)
    reply = chat_model.generate(short, max_new_tokens=4, include_prompt=False, stop_at_eos=False)
    tokens = chat_model.bridge.generate(prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False,
                                        return_type="tokens", verbose=False)
    assert reply == chat_model.tokenizer.decode(tokens[0, prompt.shape[1]:], skip_special_tokens=True)
    full = chat_model.generate(short, max_new_tokens=4, stop_at_eos=False)
    assert full == chat_model.format_chat(short) + reply


def test_template_from_a_file_and_load_model(chat_model, hf_folder, tmp_path):
    from workbench.models.loading import load_model

    path = tmp_path / "mine.jinja"
    path.write_text(CUSTOM)
    chat_model.set_chat_template(path)
    assert (chat_model.chat_template.name, chat_model.chat_template.source) == ("mine", str(path))
    assert chat_model.format_chat("the cat") == "user: the cat\nassistant:"
    chat_model.set_chat_template(str(path))
    assert chat_model.chat_template.template == CUSTOM
    model = load_model(hf_folder[0], device="cpu", chat_template=str(path))
    assert model.info()["chat_template"] == "mine" and model.info()["chat_template_source"] == str(path)


def test_hf_folder_template_is_found(hf_folder, tmp_path):
    from workbench.models.loading import load_model

    folder = tmp_path / "tiny-chat"
    shutil.copytree(hf_folder[0], folder)
    (folder / "chat_template.jinja").write_text(BUILTIN_TEMPLATES["chatml"])
    model = load_model(folder, device="cpu")
    assert model.chat_template.template == BUILTIN_TEMPLATES["chatml"]
    assert model.chat_template.source == f"tokenizer chat_template ({folder})"
    assert model.format_chat(CONVERSATION) == EXPECTED["chatml"]
    assert load_model(hf_folder[0], device="cpu").chat_template is None  # the plain folder has none


@pytest.mark.parametrize("fmt,kind,folder,expected", [
    ("meta", "tiktoken", "Llama3.1-8B-Instruct", "llama3"),
    ("meta", "tiktoken", "Llama3.1-8B", "llama3"),
    ("meta", "sentencepiece", "llama-2-7b-chat", "llama2-chat"),
    ("meta", "sentencepiece", "llama-2-7b", None),
    ("meta", "sentencepiece", "7B", None),
])
def test_meta_folders_resolve_by_tokenizer_and_name(fmt, kind, folder, expected):
    source = ModelSource(fmt, f"/models/{folder}", folder, details={"tokenizer": kind})
    template = resolve_chat_template(None, source)
    assert (template and template.name) == expected
    if expected:
        assert template.template == BUILTIN_TEMPLATES[expected]
    assert resolve_chat_template(None, source, "chatml").name == "chatml"  # the user's wins


def test_llama2_chat_meta_folder_gives_meta_reference_tokens(tmp_path):
    """A LLaMA-2-chat Meta folder: llama2-chat is picked, and chat_tokens are the ids of Meta's
    reference ``chat_completion`` (llama/generation.py), which encodes each exchange separately."""
    import sentencepiece as spm
    from meta_checkpoint import write_meta_checkpoint

    from workbench.models.loading import load_model

    ref = write_meta_checkpoint(tmp_path / "llama-2-7b-chat", llama2=True)
    model = load_model(ref["folder"], device="cpu")
    assert model.chat_template.name == "llama2-chat"
    sp = spm.SentencePieceProcessor(model_file=str(ref["tokenizer_path"]))
    bos, eos = sp.bos_id(), sp.eos_id()
    B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    dialog = [{"role": CONVERSATION[1]["role"],
               "content": B_SYS + CONVERSATION[0]["content"] + E_SYS + CONVERSATION[1]["content"]}] + CONVERSATION[2:]
    expected = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        expected += [bos] + sp.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ") + [eos]
    expected += [bos] + sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    assert model.chat_tokens(CONVERSATION)[0].tolist() == expected


def test_no_template_is_a_clear_error(chat_model):
    assert chat_model.chat_template is None and chat_model.info()["chat_template"] is None
    for call in (lambda: chat_model.format_chat(CONVERSATION), lambda: chat_model.chat_tokens("hi"),
                 lambda: chat_model.to_tokens(CONVERSATION), lambda: chat_model.generate(CONVERSATION)):
        with pytest.raises(NoChatTemplateError, match=r"has no chat template; pass one: load_model\(\.\.\., chat_template="):
            call()
    spec = load_suite("true_false_facts")
    with pytest.raises(NoChatTemplateError, match="true_false_facts: chat=True"):
        run_loglik(chat_model, spec, EvalOptions(chat=True, progress=False), EvalOptions().params())


def test_bad_messages_name_their_index(chat_model):
    chat_model.set_chat_template("chatml")
    with pytest.raises(ChatMessageError, match="message 1 has no 'content'"):
        chat_model.format_chat([{"role": "user", "content": "a"}, {"role": "assistant"}])
    with pytest.raises(ChatMessageError, match="message 2 has role 'bot'; roles are system, user, assistant"):
        chat_model.format_chat([*CONVERSATION[:2], {"role": "bot", "content": "x"}])
    with pytest.raises(ChatMessageError, match="message 0 content is a int"):
        chat_model.format_chat([{"role": "user", "content": 3}])
    with pytest.raises(ChatMessageError, match="message 0 is already a system message"):
        chat_model.format_chat(CONVERSATION, system="again")
    with pytest.raises(ChatMessageError, match="non-empty list"):
        chat_model.format_chat([])


def test_template_failures_name_the_template_and_message(chat_model, tmp_path):
    chat_model.set_chat_template("llama2-chat")
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "assistant", "content": "c"}]
    with pytest.raises(ChatTemplateError, match=r"'llama2-chat' \(built-in\) failed to render at message 2 "
                                                r"\(role 'assistant'\): TemplateError: Conversation roles must alternate"):
        chat_model.format_chat(turns)
    chat_model.set_chat_template("{{ messages[0]['content'] + messages[1]['content'] }}")
    with pytest.raises(ChatTemplateError, match="'custom' \\(string\\) failed to render at message 0"):
        chat_model.format_chat("only one")
    with pytest.raises(ChatTemplateError, match="'custom' \\(string\\) is not valid Jinja: line 1"):
        get_chat_template("{% for m in messages %}{{ m }}")
    with pytest.raises(ChatTemplateError, match="missing.jinja: chat template file not found"):
        chat_model.set_chat_template(tmp_path / "missing.jinja")
    with pytest.raises(ChatTemplateError, match="'llama4' is not a built-in \\(llama2-chat, llama3, chatml\\)"):
        chat_model.set_chat_template("llama4")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    with pytest.raises(ChatTemplateError, match="'bad' .*bad.jinja\\) is not valid Jinja"):
        chat_model.set_chat_template(bad)


def test_the_sandbox_blocks_unsafe_templates(chat_model):
    chat_model.set_chat_template("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="SecurityError|UndefinedError"):
        chat_model.format_chat("x")
    chat_model.set_chat_template("{% set x = messages.append(1) %}{{ messages | length }}")
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        chat_model.format_chat("x")


def test_chat_evals_score_the_rendered_prompt(chat_model):
    """chat=True: each context is one user turn (after the system prompt) with an open assistant
    turn, the choices lose their delimiter, and the scores are those of the rendered requests."""
    chat_model.set_chat_template("chatml")
    spec = load_suite("true_false_facts")
    options = EvalOptions(chat=True, system_prompt="Answer True or False.", progress=False)
    params = options.params(spec.params)
    assert params["chat"] is True and params["system_prompt"] == "Answer True or False."
    run = run_loglik(chat_model, spec, options, params)
    samples = run.samples
    examples, _, _ = load_examples(spec, options)
    plain_context, lists = render(spec, examples.iloc[0].to_dict())
    expected_context = chat_model.format_chat(plain_context, system="Answer True or False.")
    assert samples.context[0] == expected_context
    assert samples.choices[0] == ["True", "False"]  # no " " delimiter after the assistant header
    requests = [(expected_context, c) for c in samples.choices[0]]
    assert samples.loglik[0] == pytest.approx([ll for ll, _ in loglikelihood(chat_model, requests)], abs=1e-4)
    seen = encode_pair(chat_model.tokenizer, expected_context, "True", add_bos=True).context
    assert seen[0] == chat_model.tokenizer.bos_token_id and seen.count(chat_model.tokenizer.bos_token_id) == 1
    assert samples.prompt_ids_sha256[0] == token_ids_hash(seen) and samples.prompt_n_tokens[0] == len(seen)
    assert run.extra["chat_template"]["name"] == "chatml" and len(run.extra["chat_template"]["sha256"]) == 64
    # without chat: the plain prompt, its own hash, and the manifest's params as before
    plain = score(chat_model, with_chat(spec, chat_model, EvalOptions()), examples.head(1))
    assert plain.context[0] == plain_context and plain.choices[0] == ["True", "False"]
    assert plain.prompt_ids_sha256[0] != samples.prompt_ids_sha256[0]
    assert "chat" not in EvalOptions().params()
    with pytest.raises(ValueError, match="pass chat=True as well"):
        EvalOptions(system_prompt="x")


def test_patch_sweep_takes_conversations(chat_model):
    from workbench.patching.sweep import prompt_tokens, token_alignment

    chat_model.set_chat_template("chatml")
    clean = [{"role": "user", "content": "the cat sat"}]
    assert torch.equal(prompt_tokens(chat_model, clean, "clean"), chat_model.chat_tokens(clean))
    pairs = prompt_tokens(chat_model, [clean, [{"role": "user", "content": "the dog sat"}]], "clean")
    assert pairs.shape[0] == 2
    table = token_alignment(chat_model, clean, [{"role": "user", "content": "the dog sat"}])
    assert table.pair.eq(0).all() and (~table.same).sum() == 1


def test_llama3_meta_folder_gives_meta_chat_format_tokens(tmp_path):
    """A LLaMA 3 Meta folder: llama3 is picked, and chat_tokens are Meta's ChatFormat ids (one
    <|begin_of_text|>, a header per message, stripped content, <|eot_id|>), built with tiktoken."""
    import meta_checkpoint as mc
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from workbench.models.loading import load_model
    from workbench.models.tiktoken_tokenizer import LLAMA3_PATTERN, llama3_special_tokens

    ref = mc.write_meta_checkpoint(tmp_path / "Llama3.1-8B-Instruct", params=mc.tiny_params(scaled_rope=True),
                                   tiktoken=True)
    model = load_model(ref["folder"], device="cpu")
    assert model.chat_template.name == "llama3" and "LLaMA 3 Meta folder" in model.chat_template.source
    ranks = load_tiktoken_bpe(str(ref["tokenizer_path"]))
    specials = {name: len(ranks) + i for i, name in enumerate(llama3_special_tokens("3.1"))}
    enc = tiktoken.Encoding("ref", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    want = [specials["<|begin_of_text|>"]]
    for message in [*CONVERSATION, {"role": "assistant", "content": None}]:
        want += [specials["<|start_header_id|>"], *enc.encode_ordinary(message["role"]),
                 specials["<|end_header_id|>"], *enc.encode_ordinary("\n\n")]
        if message["content"] is not None:
            want += [*enc.encode_ordinary(message["content"].strip()), specials["<|eot_id|>"]]
    assert model.chat_tokens(CONVERSATION)[0].tolist() == want  # one BOS, from the template


def test_widgets_take_a_chat_prompt(chat_model):
    from workbench.viz.widgets import AttentionViewer, LogitLensViewer

    chat_model.set_chat_template("chatml")
    viewer = AttentionViewer(chat_model, "the cat sat", chat=True)
    assert torch.equal(viewer._token_ids, chat_model.chat_tokens("the cat sat"))
    lens = LogitLensViewer(chat_model, "the cat sat", target="mat", chat=True)
    assert len(lens.tokens) == chat_model.chat_tokens("the cat sat").shape[1]
