"""The refusal direction on the tiny model, against hand computations from plain forwards.

The "harmful" and "harmless" sets are two sets of made-up sentences over the tiny vocabulary:
what is tested is the arithmetic (means, ablation, addition, scores, selection), not refusal.
"""

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.common.errors import DataError, PatchingError
from workbench.patching.refusal import (
    category_directions,
    cosine_matrix,
    post_instruction_tokens,
    refusal_direction,
    refusal_scores,
    resolve_refusal_tokens,
)
from workbench.patching.refusal_select import kl_divergence, refusal_score, select

# A template over the tiny vocabulary, shaped like ChatML: the user's turn ends with "?", the
# generation prompt is " a :", so the post-instruction tokens are "? a :".
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}q : {{ m['content'] }} ?"
            "{% else %} a : {{ m['content'] }} .{% endif %}{% endfor %}{% if add_generation_prompt %} a :{% endif %}")
WORDS_A = "the cat sat on a mat and dog ran to house red".split()
WORDS_B = "blue green is was of in it capital france paris rome italy".split()


def sentences(words, n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, rng.randint(2, 6))) for _ in range(n)]


HARMFUL = sentences(WORDS_A, 20, 1)
HARMLESS = sentences(WORDS_B, 20, 2)
# No filter (nothing here refuses) and no induce/KL thresholds (a random model's scores mean nothing).
LOOSE = dict(refusal_tokens=["the"], filter=False, kl_threshold=None, induce_threshold=None, progress=False)


@pytest.fixture(scope="module")
def model(hf_folder):
    import workbench as wb

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared machine
    model = wb.load_model(hf_folder[0], device="cpu")  # our own copy: the template stays here
    model.set_chat_template(TEMPLATE)
    yield model
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rd(model):
    return refusal_direction(model, HARMFUL, HARMLESS, n_val=5, **LOOSE)


def ids(model, words):
    return [model.tokenizer.convert_tokens_to_ids(w) for w in words.split()]


def resid(model, instruction, hook):
    """``hook``'s activation ``[pos, d]`` of one rendered prompt, from a plain forward."""
    with torch.no_grad():
        _, cache = model.run_with_cache(model.chat_tokens(instruction), names_filter=[hook])
    return cache[hook][0].double()


def test_template_tokens(model):
    assert post_instruction_tokens(model) == ids(model, "? a :")
    assert resolve_refusal_tokens(model, ["the cat", "it was", "the dog"]) == ids(model, "the it")
    assert resolve_refusal_tokens(model, [5, 5, 7]) == [5, 7]
    with pytest.raises(PatchingError, match="no refusal token"):
        resolve_refusal_tokens(model)  # "I'm sorry" ... are unknown words here
    with pytest.raises(PatchingError, match="not in the vocabulary"):
        resolve_refusal_tokens(model, [10**6])


def test_mean_difference_by_hand(model, rd):
    train_harmful, train_harmless = rd.prompts["harmful_train"], rd.prompts["harmless_train"]
    assert len(train_harmful) == 15 and len(rd.prompts["harmful_val"]) == 5
    assert set(train_harmful) | set(rd.prompts["harmful_val"]) == set(HARMFUL)
    for row in rd.frame.itertuples():
        hook = f"blocks.{row.layer}.hook_resid_pre"
        harmful = torch.stack([resid(model, x, hook)[row.position] for x in train_harmful]).mean(0)
        harmless = torch.stack([resid(model, x, hook)[row.position] for x in train_harmless]).mean(0)
        diff = (harmful - harmless).numpy()
        assert row.norm == pytest.approx(np.linalg.norm(diff), rel=1e-4, abs=1e-6)
        if row.selected:
            np.testing.assert_allclose(rd.mean_diff, diff, rtol=1e-4, atol=1e-5)
    # Layer 0's resid_pre is the embedding of the same template token in every prompt.
    assert (rd.frame.query("layer == 0")["filtered"] == "zero mean difference").all()


def test_refusal_score_is_log_odds_of_the_logits(model):
    tokens = ids(model, "the it")
    prompts = HARMFUL[:4] + HARMLESS[:3]  # different lengths: padding and the shared opening
    by_hand = []
    for x in prompts:
        with torch.no_grad():
            logits = model(model.chat_tokens(x))[0, -1].double()
        p = float(logits.softmax(-1)[tokens].sum())
        by_hand.append(math.log(p + 1e-8) - math.log(1 - p + 1e-8))
    np.testing.assert_allclose(refusal_scores(model, prompts, tokens), by_hand, rtol=1e-4, atol=1e-4)
    logits = torch.randn(3, 50)
    p = logits.double().softmax(-1)[:, [4, 9]].sum(-1).numpy()
    np.testing.assert_allclose(refusal_score(logits, [4, 9]).numpy(), np.log(p + 1e-8) - np.log(1 - p + 1e-8))
    a, b = torch.randn(2, 50), torch.randn(2, 50)
    pa, pb = a.double().softmax(-1).numpy(), b.double().softmax(-1).numpy()
    np.testing.assert_allclose(kl_divergence(a, b).numpy(), (pa * np.log(pa / pb)).sum(-1), rtol=1e-10)


def test_bypass_removes_the_component_everywhere(model, rd):
    unit = torch.as_tensor(rd.direction.vector, dtype=torch.float64)
    names = [f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers)
             for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    tokens = model.chat_tokens(HARMFUL[0])
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=names)
        with rd.bypass():
            kinds = [r["kind"] for r in model.active_interventions()]
            _, ablated = model.run_with_cache(tokens, names_filter=names)
    assert kinds == ["ablate_direction"] * 3 and model.active_interventions() == []
    assert max(float((clean[n].double() @ unit).abs().max()) for n in names) > 0.1
    for name in names:
        assert float((ablated[name].double() @ unit).abs().max()) < 1e-4, name


def test_induce_adds_the_mean_difference_at_its_layer(model, rd):
    tokens = model.chat_tokens(HARMLESS[0])
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=names)
        with rd.induce():
            (record,) = model.active_interventions()
            _, induced = model.run_with_cache(tokens, names_filter=names)
    assert record["kind"] == "steer" and record["layer"] == rd.layer
    assert record["alpha"] == pytest.approx(float(np.linalg.norm(rd.mean_diff)))
    for layer in range(rd.layer):
        torch.testing.assert_close(induced[names[layer]], clean[names[layer]])
    added = (induced[names[rd.layer]] - clean[names[rd.layer]])[0]  # every position
    expected = torch.as_tensor(rd.mean_diff).expand_as(added)
    torch.testing.assert_close(added, expected, rtol=1e-4, atol=1e-4)


def test_batched_search_equals_the_loop(model, rd):
    loop = refusal_direction(model, HARMFUL, HARMLESS, n_val=5, batched=False, **LOOSE)
    columns = ["ablation_score", "induce_score", "kl"]
    np.testing.assert_allclose(rd.frame[columns].to_numpy(), loop.frame[columns].to_numpy(), rtol=1e-4, atol=1e-5)
    assert (rd.layer, rd.position) == (loop.layer, loop.position)
    assert rd.frame["filtered"].equals(loop.frame["filtered"])


def test_scores_under_the_contexts_match_plain_forwards(model, rd):
    """The batched scores under bypass / induce are the plain forward's under the same context."""
    tokens = rd.refusal_tokens
    for context in (rd.bypass, rd.induce):
        with context():
            fast = refusal_scores(model, HARMFUL[:3], tokens)
            with torch.no_grad():
                plain = [float(refusal_score(model(model.chat_tokens(x)), tokens)[0]) for x in HARMFUL[:3]]
        np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_selection_rule():
    frame = pd.DataFrame({
        "layer": [1, 2, 3, 8, 4, 5],
        "position": [-1] * 6,
        "ablation_score": [-1.0, -5.0, -2.0, -9.0, float("nan"), -3.0],
        "induce_score": [0.5, -0.1, 0.2, 1.0, 1.0, 0.0],
        "kl": [0.05, 0.05, 0.2, 0.01, 0.01, 0.1],
    })
    out = select(frame, n_layers=10)  # layers >= int(10 * 0.8) = 8 are pruned
    assert out["filtered"].tolist() == [None, "induce_score < 0", "kl > 0.1", "layer >= 8", "nan score", None]
    assert out["selected"].tolist() == [False, False, False, False, False, True]  # -3 < -1
    assert select(frame, 10, kl_threshold=None, induce_threshold=None, prune_layer_fraction=None)["selected"].tolist() \
        == [False, False, False, True, False, False]
    with pytest.raises(PatchingError, match="every refusal-direction candidate") as err:
        select(frame.iloc[1:5], 10)
    assert err.value.frame["filtered"].notna().all()


def test_placebo_is_orthogonal_with_the_same_norm(model, rd):
    placebo = rd.placebo(seed=3)
    assert abs(float(placebo.direction.vector @ rd.direction.vector)) < 1e-6
    assert np.linalg.norm(placebo.mean_diff) == pytest.approx(np.linalg.norm(rd.mean_diff), rel=1e-5)
    assert placebo.direction.concept == "random" and placebo.layer == rd.layer
    np.testing.assert_allclose(rd.placebo(seed=3).mean_diff, placebo.mean_diff)
    with placebo.bypass():
        assert len(model.active_interventions()) == 3
    with placebo.induce():
        assert model.active_interventions()[0]["alpha"] == pytest.approx(float(np.linalg.norm(rd.mean_diff)))


def test_provenance_and_frame(model, rd):
    prov = rd.direction.provenance
    assert rd.direction.hook == f"blocks.{rd.layer}.hook_resid_pre" and rd.direction.concept == "refusal"
    assert prov["model_fingerprint"] == model.source.fingerprint and prov["data"] == "user"
    assert (prov["layer"], prov["position"], prov["n_harmful_train"]) == (rd.layer, rd.position, 15)
    assert len(rd.frame) == model.cfg.n_layers * 3 and rd.frame["selected"].sum() == 1
    assert set(rd.frame["token"]) == {"?", "a", ":"}


def test_restricting_candidates_and_bad_input(model):
    frame = pd.DataFrame({"instruction": HARMFUL, "split": ["train"] * 15 + ["val"] * 5})
    rd = refusal_direction(model, frame, HARMLESS, layers=[1], positions=[0, -1], **LOOSE)
    assert sorted(zip(rd.frame["layer"], rd.frame["position"], strict=True)) == [(1, -3), (1, -1)]
    assert rd.prompts["harmful_val"] == HARMFUL[15:]
    with pytest.raises(DataError, match="'instruction' or 'prompt'"):
        refusal_direction(model, pd.DataFrame({"text": HARMFUL}), HARMLESS, **LOOSE)
    with pytest.raises(PatchingError, match="positions"):
        refusal_direction(model, HARMFUL, HARMLESS, positions=[-4], **LOOSE)
    with pytest.raises(PatchingError, match="layers"):
        refusal_direction(model, HARMFUL, HARMLESS, layers=[3], **LOOSE)


def test_category_directions_and_cosines(model):
    harmful = pd.DataFrame({"instruction": HARMFUL, "category": ["x"] * 10 + ["y"] * 10})
    dirs = category_directions(model, harmful, HARMLESS, layer=2, position=-1)
    hook = "blocks.2.hook_resid_pre"
    base = torch.stack([resid(model, x, hook)[-1] for x in HARMLESS]).mean(0)
    for name, rows in (("x", HARMFUL[:10]), ("y", HARMFUL[10:])):
        diff = torch.stack([resid(model, x, hook)[-1] for x in rows]).mean(0) - base
        np.testing.assert_allclose(dirs[name].vector, (diff / diff.norm()).numpy(), rtol=1e-4, atol=1e-5)
        assert dirs[name].hook == hook and dirs[name].provenance["n_harmful"] == 10
    cos = cosine_matrix(dirs)
    assert list(cos.index) == ["x", "y"] and np.allclose(np.diag(cos), 1)
    assert cos.loc["x", "y"] == pytest.approx(float(dirs["x"].vector @ dirs["y"].vector), abs=1e-6)


def test_relative_induce_rule_for_a_model_that_rarely_refuses(model, rd):
    """Arditi's induce test (score >= 0) keeps nothing here; the fallback compares with the baseline."""
    settings = {**LOOSE, "induce_threshold": 0.0}
    with pytest.raises(PatchingError, match="induce_score < 0"):
        refusal_direction(model, HARMFUL, HARMLESS, n_val=5, induce_fallback=False, **settings)
    with pytest.warns(UserWarning, match="induce test becomes relative"):
        relative = refusal_direction(model, HARMFUL, HARMLESS, n_val=5, **settings)
    assert relative.info["rule"].startswith("relative") and relative.info["induce_threshold"] == pytest.approx(
        relative.info["baseline_harmless"])
    kept = relative.frame[relative.frame["filtered"].isna()]
    assert (kept["induce_score"] >= relative.info["baseline_harmless"]).all()
    assert relative.frame.loc[relative.frame["selected"], "ablation_score"].item() == kept["ablation_score"].min()
