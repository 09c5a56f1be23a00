"""Views take chat messages: attention, logit lens and the steering generator on a conversation
see exactly the ids ``model.chat_tokens`` gives (the oracle: the same view on those ids, and the
model's own forward pass / ``generate`` on them)."""

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.models.direction import Direction
from workbench.viz.attention import attention_patterns
from workbench.viz.logit_lens import logit_lens, residual_stack

CONVERSATION = [{"role": "user", "content": "the cat sat on a mat"}]


class FakeScorer:
    """Share of words that are 'dog': a scorer with a known rule."""

    name = "dog-share"
    scale_note = "share of 'dog' words"

    def score(self, texts):
        return np.array([t.split().count("dog") / max(1, len(t.split())) for t in texts])


@pytest.fixture
def chat_model(tiny_model):
    tiny_model.set_chat_template("chatml")
    yield tiny_model
    tiny_model.set_chat_template(None)


def test_attention_patterns_of_a_conversation_are_those_of_its_chat_tokens(chat_model):
    ids = chat_model.chat_tokens(CONVERSATION)
    patterns, tokens = attention_patterns(chat_model, CONVERSATION, layers=[0, 1])
    with torch.no_grad():
        _, cache = chat_model.run_with_cache(ids, names_filter=["blocks.1.attn.hook_pattern"])
    assert tokens == chat_model.to_str_tokens(ids[0])
    assert len(tokens) == ids.shape[1] > chat_model.to_tokens(CONVERSATION[0]["content"]).shape[1]  # the template's
    np.testing.assert_allclose(patterns[1], cache["blocks.1.attn.hook_pattern"][0].float().numpy(), atol=1e-6)
    same, _ = attention_patterns(chat_model, ids, layers=[0])
    np.testing.assert_array_equal(patterns[0], same[0])


def test_logit_lens_of_a_conversation_ends_in_the_models_own_prediction(chat_model):
    ids = chat_model.chat_tokens(CONVERSATION)
    resid, tokens = residual_stack(chat_model, CONVERSATION)
    assert resid.shape[:2] == (chat_model.cfg.n_layers + 1, ids.shape[1])
    assert tokens == chat_model.to_str_tokens(ids[0])
    lens = logit_lens(chat_model, CONVERSATION, target=" cat", positions=[-1])
    last = chat_model.cfg.n_layers - 1
    with torch.no_grad():
        probs = chat_model(ids)[0, -1].softmax(-1)
    top = lens.top[lens.top["layer"] == last].sort_values("rank")
    assert top["token_id"].tolist() == probs.topk(5).indices.tolist()
    np.testing.assert_allclose(top["prob"], probs.topk(5).values.numpy(), atol=1e-5)
    target = lens.target[lens.target["layer"] == last]
    assert target["prob"].item() == pytest.approx(probs[target["token_id"].item()].item(), abs=1e-6)


def test_several_prompts_are_still_refused(chat_model):
    with pytest.raises(ValueError, match="one conversation"):
        attention_patterns(chat_model, ["a b", "c d"])
    with pytest.raises(ValueError, match="one conversation"):
        residual_stack(chat_model, [CONVERSATION, CONVERSATION])


def test_steering_generator_with_chat_sends_one_user_message(chat_model):
    direction = Direction(np.random.default_rng(0).standard_normal(64), "blocks.1.hook_resid_post", 1, "toy", "manual")
    gen = wb.viz.SteeringGenerator(chat_model, direction, "the cat <b>sat</b>", alpha=30.0, max_new_tokens=6,
                                   seed=3, scorer=FakeScorer(), chat=True)
    assert "#b00020" not in gen.status.value, gen.status.value
    message = [{"role": "user", "content": "the cat <b>sat</b>"}]
    kwargs = dict(max_new_tokens=6, seed=3, do_sample=True, top_p=0.9, include_prompt=False)
    plain = chat_model.generate(message, **kwargs)
    with chat_model.steer(direction, layer=1, alpha=30.0):
        steered = chat_model.generate(message, **kwargs)
    assert gen.texts == {"unsteered": plain, "steered": steered}
    assert plain != chat_model.generate("the cat <b>sat</b>", **kwargs)  # the template changed what it saw
    # The cards show the prompt as rendered, escaped: special tokens and the user's tags as text.
    assert "&lt;|im_start|&gt;user\nthe cat &lt;b&gt;sat&lt;/b&gt;&lt;|im_end|&gt;" in gen.unsteered.value
    assert "<b>sat</b>" not in gen.steered.value
    assert "chat template: chatml" in gen.status.value


def test_steering_generator_chat_without_a_template_says_how_to_pass_one(tiny_model):
    direction = Direction(np.ones(64), "blocks.1.hook_resid_post", 1, "toy", "manual")
    gen = wb.viz.SteeringGenerator(tiny_model, direction, "hello", max_new_tokens=2, scorer=FakeScorer(), chat=True)
    assert "#b00020" in gen.status.value and "NoChatTemplateError" in gen.status.value
    assert "chat_template" in gen.status.value  # the message names how to pass one
    assert "texts" in vars(gen) and gen.texts == {}
