"""Steering generator: its texts are model.generate's under model.steer, same seed; scored and escaped."""

import numpy as np
import pytest

import workbench as wb
from workbench.models.direction import Direction
from workbench.viz.steering_widget import continuation_html

PROMPT = "the cat sat on a mat and"


class FakeScorer:
    """A scorer with a known rule (share of words that are 'dog'), so the scores have an oracle."""

    name = "dog-share <test>"
    scale_note = "share of 'dog' words"

    def score(self, texts):
        return np.array([t.split().count("dog") / max(1, len(t.split())) for t in texts])


@pytest.fixture(scope="module")
def directions():
    rng = np.random.default_rng(0)
    return {"toy": Direction(rng.standard_normal(64), "blocks.1.hook_resid_post", 1, "toy", "manual"),
            "other <i>": Direction(rng.standard_normal(64), "blocks.2.hook_resid_post", 2, "other", "manual")}


def test_continuations_equal_generate_under_steer(tiny_model, directions):
    gen = wb.viz.SteeringGenerator(tiny_model, directions, PROMPT, alpha=30.0, max_new_tokens=6, seed=3,
                               scorer=FakeScorer())
    assert "#b00020" not in gen.status.value, gen.status.value
    assert gen.layer.value == 1  # the first direction's own layer
    kwargs = dict(max_new_tokens=6, seed=3, do_sample=True, top_p=0.9, include_prompt=False)
    plain = tiny_model.generate(PROMPT, **kwargs)
    with tiny_model.steer(directions["toy"], layer=1, alpha=30.0):
        steered = tiny_model.generate(PROMPT, **kwargs)
    assert gen.texts == {"unsteered": plain, "steered": steered}
    assert plain != steered  # a strength of 30 on a d_model=64 model changes the sample
    assert gen.scores["steered"] == pytest.approx(FakeScorer().score([steered])[0])
    assert tiny_model.active_interventions() == []  # nothing left open

    gen.direction.value = "other <i>"
    gen.layer.value = 2
    gen.alpha.value = -12.5
    with tiny_model.steer(directions["other <i>"], layer=2, alpha=-12.5):
        expected = tiny_model.generate(PROMPT, **kwargs)
    assert gen.texts == {"unsteered": plain, "steered": expected}
    assert "other &lt;i&gt;" in gen.steered.value and "strength -12.5" in gen.steered.value
    assert "dog-share &lt;test&gt;" in gen.status.value


def test_default_scorer_is_named_and_greedy_mode(tiny_model, directions):
    gen = wb.viz.SteeringGenerator(tiny_model, directions["toy"], PROMPT, alpha=0.0, max_new_tokens=4, do_sample=False)
    assert gen.direction.options == ("toy (manual)",)
    assert gen.texts["steered"] == gen.texts["unsteered"]  # alpha 0 adds nothing
    assert gen.texts["unsteered"] == tiny_model.generate(PROMPT, max_new_tokens=4, include_prompt=False)
    scores = wb.get_scorer().score([gen.texts["unsteered"]])
    assert gen.scores["unsteered"] == pytest.approx(float(scores[0]))
    assert "profanity-check" in gen.status.value and "Perspective" in gen.scorer_note.value


def test_escaping_and_errors(tiny_model, directions):
    html = continuation_html("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", 0.9, "t", "s")
    assert "<script>" not in html and "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    gen = wb.viz.SteeringGenerator(tiny_model, directions, "<script>alert(1)</script> the cat", max_new_tokens=3,
                               scorer=FakeScorer())
    assert "<script>" not in gen.unsteered.value and "&lt;script&gt;" in gen.steered.value
    gen.prompt.value = "   "
    assert "#b00020" in gen.status.value and "prompt is empty" in gen.status.value
    with pytest.raises(ValueError, match="empty"):
        wb.viz.SteeringGenerator(tiny_model, {}, PROMPT)


def test_doctests():
    import doctest

    from workbench.viz import steering_widget

    result = doctest.testmod(steering_widget)
    assert result.failed == 0 and result.attempted > 0
