"""compare_models against an independent computation on the plain Hugging Face models."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_hf import SPECIALS, WORDS, tiny_config, tiny_tokenizer, write_hf_folder
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from workbench.models.compare import ModelComparison, ModelMismatchError, compare_models

# Different lengths in one batch (batch_size=2): padding must not change any number.
TEXTS = ["the cat sat on a mat", "red", "what is the capital of france ? paris", "the dog ran to the house ."]


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second tiny model (other seed, non-trivial final-norm weight) and its plain HF model."""
    import workbench as wb

    folder = tmp_path_factory.mktemp("hf-b") / "tiny-llama-b"
    hf = write_hf_folder(folder, seed=1)
    with torch.no_grad():  # the lens multiplies by this weight: ones would not test that it does
        hf.model.norm.weight.copy_(1 + 0.5 * torch.randn(hf.model.norm.weight.shape))
    hf.save_pretrained(folder)
    return wb.load_model(folder, device="cpu"), hf


def _reference(hf, tokenizer, texts):
    """Per text: log-probs [pos, vocab] and residuals [1 + layers, pos, d_model] from the HF model,
    the residuals read by forward hooks (HF's hidden_states[-1] has the final norm applied)."""
    captured = []

    def keep(module, args, output):
        captured.append((output[0] if isinstance(output, tuple) else output)[0])

    modules = [hf.model.embed_tokens, *hf.model.layers]
    handles = [m.register_forward_hook(keep) for m in modules]
    out = []
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            captured.clear()
            with torch.no_grad():
                logits = hf(ids).logits[0].float()
            out.append((ids[0].tolist(), torch.log_softmax(logits, -1), torch.stack(captured).float()))
    finally:
        for h in handles:
            h.remove()
    return out


def _residual_reference(ref_a, ref_b, start):
    ra = torch.cat([r[:, start:] for _, _, r in ref_a], dim=1)  # [layers, tokens, d_model]
    rb = torch.cat([r[:, start:] for _, _, r in ref_b], dim=1)
    diff = rb - ra
    return {
        "diff_norm": diff.norm(dim=-1).mean(-1), "rel_diff_norm": (diff.norm(dim=-1) / ra.norm(dim=-1)).mean(-1),
        "cosine": torch.nn.functional.cosine_similarity(ra, rb, dim=-1).mean(-1),
        "norm_a": ra.norm(dim=-1).mean(-1), "norm_b": rb.norm(dim=-1).mean(-1),
        "mean_diff_norm": diff.mean(1).norm(dim=-1), "mean_diff": diff.mean(1), "n": ra.shape[1],
    }


@pytest.fixture(scope="module")
def pair(tiny_model, other, hf_folder):
    model_b, hf_b = other
    comparison = compare_models(tiny_model, model_b, TEXTS, batch_size=2, top_k=4, progress=False)
    ref_a = _reference(hf_folder[1], tiny_model.tokenizer, TEXTS)
    ref_b = _reference(hf_b, tiny_model.tokenizer, TEXTS)
    return comparison, ref_a, ref_b, hf_b


def test_a_model_against_itself_differs_nowhere(tiny_model):
    c = compare_models(tiny_model, tiny_model, TEXTS, batch_size=3, progress=False)
    assert isinstance(c, ModelComparison)
    np.testing.assert_allclose(c.tokens["kl"], 0, atol=1e-6)
    np.testing.assert_allclose(c.tokens["kl_ba"], 0, atol=1e-6)
    assert c.tokens["agree"].all() and c.summary["top1_agreement"] == 1.0
    np.testing.assert_allclose(c.layers[["diff_norm", "rel_diff_norm", "mean_diff_norm"]], 0, atol=1e-6)
    np.testing.assert_allclose(c.layers["cosine"], 1, atol=1e-5)
    np.testing.assert_allclose(c.lens["logit"], 0, atol=1e-6)
    n_tokens = sum(len(tiny_model.to_tokens(t)[0]) for t in TEXTS)
    assert c.summary["n_tokens"] == len(c.tokens) == n_tokens and c.summary["n_texts"] == len(TEXTS)
    assert c.layers["layer"].tolist() == [-1, 0, 1, 2]
    assert c.layers["hook"].iloc[0] == "blocks.0.hook_resid_pre"


def test_per_token_kl_and_top1_match_the_hf_logits(pair):
    c, ref_a, ref_b, _ = pair
    for i, ((ids, lpa, _), (_, lpb, _)) in enumerate(zip(ref_a, ref_b, strict=True)):
        rows = c.tokens[c.tokens["text_index"] == i]
        assert rows["position"].tolist() == list(range(len(ids))) and rows["token_id"].tolist() == ids
        kl = torch.nn.functional.kl_div(lpb, lpa, log_target=True, reduction="none").sum(-1)  # KL(a || b)
        kl_ba = torch.nn.functional.kl_div(lpa, lpb, log_target=True, reduction="none").sum(-1)
        np.testing.assert_allclose(rows["kl"], kl.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rows["kl_ba"], kl_ba.numpy(), rtol=1e-4, atol=1e-6)
        pa, pb = lpa.exp().numpy(), lpb.exp().numpy()
        assert rows["top1_a_id"].tolist() == pa.argmax(-1).tolist()
        assert rows["top1_b_id"].tolist() == pb.argmax(-1).tolist()
        assert rows["agree"].tolist() == (pa.argmax(-1) == pb.argmax(-1)).tolist()
        top = pa.argmax(-1)
        np.testing.assert_allclose(rows["p_a"], pa[np.arange(len(ids)), top], rtol=1e-5)
        np.testing.assert_allclose(rows["p_b"], pb[np.arange(len(ids)), top], rtol=1e-4)
        np.testing.assert_allclose(rows["logp_next_a"].iloc[:-1], lpa[np.arange(len(ids) - 1), ids[1:]], rtol=1e-5)
        assert np.isnan(rows["logp_next_b"].iloc[-1]) and pd.isna(rows["next_token"].iloc[-1])
        assert rows["next_token"].tolist()[:-1] == rows["token"].tolist()[1:]
    agree = np.concatenate([(a[1].argmax(-1) == b[1].argmax(-1)).numpy() for a, b in zip(ref_a, ref_b, strict=True)])
    assert c.summary["top1_agreement"] == pytest.approx(agree.mean())
    assert c.summary["mean_kl"] == pytest.approx(c.tokens["kl"].mean()) and c.summary["mean_kl"] > 0.01
    assert c.tokens["token"].iloc[:3].tolist() == ["<s>", "the", "cat"]


def test_per_layer_differences_match_the_hf_residuals(pair):
    c, ref_a, ref_b, _ = pair
    expected = _residual_reference(ref_a, ref_b, start=1)  # skip_bos: position 0 is BOS
    assert (c.layers["n_tokens"] == expected["n"]).all()
    for column in ("diff_norm", "rel_diff_norm", "cosine", "norm_a", "norm_b", "mean_diff_norm"):
        np.testing.assert_allclose(c.layers[column], expected[column].numpy(), rtol=1e-4, err_msg=column)
    assert (c.layers["diff_norm"] > 0).all() and (c.layers["cosine"] < 0.999).all()


def test_the_difference_lens_is_the_unembedded_weighted_mean_difference(pair):
    c, ref_a, ref_b, hf_b = pair
    d = _residual_reference(ref_a, ref_b, start=1)["mean_diff"]  # [layers, d_model]
    logits = (hf_b.model.norm.weight.detach() * d) @ hf_b.lm_head.weight.detach().T  # [layers, vocab]
    tokenizer = tiny_tokenizer()
    assert set(c.lens["direction"]) == {"promoted", "suppressed"} and len(c.lens) == 4 * 2 * 4
    for row, layer in enumerate(range(-1, 3)):
        for direction, order in (("promoted", -1), ("suppressed", 1)):
            got = c.lens[(c.lens["layer"] == layer) & (c.lens["direction"] == direction)].sort_values("rank")
            want = np.argsort(order * logits[row].numpy())[:4]
            assert got["token_id"].tolist() == want.tolist(), (layer, direction)
            np.testing.assert_allclose(got["logit"], logits[row, want].numpy(), rtol=1e-4, atol=1e-6)
            assert got["token"].tolist() == [tokenizer.decode([int(i)]) for i in want]


def test_skip_bos_only_changes_the_residual_statistics(pair, tiny_model, other):
    c, ref_a, ref_b, _ = pair
    full = compare_models(tiny_model, other[0], TEXTS, batch_size=4, top_k=4, skip_bos=False, progress=False)
    pd.testing.assert_frame_equal(full.tokens, c.tokens, rtol=1e-5)
    expected = _residual_reference(ref_a, ref_b, start=0)
    assert (full.layers["n_tokens"] == expected["n"]).all() and expected["n"] == c.layers["n_tokens"][0] + len(TEXTS)
    for column in ("diff_norm", "cosine", "mean_diff_norm"):
        np.testing.assert_allclose(full.layers[column], expected[column].numpy(), rtol=1e-4, err_msg=column)
    assert not np.allclose(full.layers["mean_diff_norm"], c.layers["mean_diff_norm"])
    assert full.summary["skip_bos"] is False and c.summary["skip_bos"] is True


def test_top_disagreements_plot_and_html(pair):
    c = pair[0]
    top = c.top_disagreements(3)
    assert len(top) == 3 and top["kl"].is_monotonic_decreasing and top["kl"].iloc[0] == c.tokens["kl"].max()
    for row in top.itertuples():
        assert row.context.endswith(f"[{row.token}]")
    first = c.top_disagreements(len(c.tokens)).query("text_index == 0 and position == 2").iloc[0]
    assert first.context == "<s>the[cat]"
    fig = c.plot()
    assert len(fig.data) == 3 and fig.data[2].type == "histogram"
    html = c._repr_html_()
    assert "&lt;s&gt;" in html and "<s>" not in html
    assert "mean KL" in repr(c)


def test_one_text_and_max_tokens(tiny_model, other):
    c = compare_models(tiny_model, other[0], "the cat sat on a mat and the dog ran", max_tokens=4, progress=False)
    assert c.summary["n_texts"] == 1 and c.tokens["position"].tolist() == [0, 1, 2, 3]
    assert pd.isna(c.tokens["next_token"].iloc[-1])  # truncated: the cut token is not shown as next


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        compare_models(tiny_model, tiny_model, [], progress=False)
    with pytest.raises(ValueError, match="positive"):
        compare_models(tiny_model, tiny_model, TEXTS, batch_size=0, progress=False)


def _load(tmp_path, name, **overrides):
    import workbench as wb

    write_hf_folder(tmp_path / name, **overrides)
    return wb.load_model(tmp_path / name, device="cpu")


def test_different_numbers_of_layers_are_named(tiny_model, tmp_path):
    shallow = _load(tmp_path, "two-layers", num_hidden_layers=2)
    with pytest.raises(ModelMismatchError, match="layers: 3 vs 2"):
        compare_models(tiny_model, shallow, TEXTS, progress=False)


def test_different_vocabulary_sizes_are_named(tiny_model, tmp_path):
    import workbench as wb

    folder = tmp_path / "wide-vocab"  # the same tokenizer, a larger (padded) embedding
    LlamaForCausalLM(tiny_config(48)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    wide = wb.load_model(folder, device="cpu")
    with pytest.raises(ModelMismatchError, match=r"vocabulary size: \d+ vs 48"):
        compare_models(tiny_model, wide, TEXTS, progress=False)


def test_a_tokenizer_that_splits_a_text_differently_names_the_text(tiny_model, tmp_path):
    import workbench as wb

    folder = tmp_path / "other-tokenizer"
    write_hf_folder(folder)
    words = list(dict.fromkeys(WORDS))
    i, j = words.index("cat"), words.index("dog")
    words[i], words[j] = words[j], words[i]  # same size, two ids swapped
    backend = Tokenizer(models.WordLevel(vocab={t: k for k, t in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(folder)
    swapped = wb.load_model(folder, device="cpu")
    texts = ["red", "the cat sat"]  # the first tokenizes alike; the second does not
    with pytest.warns(UserWarning, match="vocabulary entries"), pytest.raises(ModelMismatchError, match=r"texts\[1\]"):
        compare_models(tiny_model, swapped, texts, progress=False)
