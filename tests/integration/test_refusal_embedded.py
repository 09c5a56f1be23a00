"""The refusal direction of the embedded SmolLM2-135M-Instruct, on Arditi et al.'s splits.

Small numbers of prompts and candidates keep it near a minute; the full-default search is a
benchmark-sized job (see benchmarks/refusal_direction.py and the issue's note).
"""

import json
import random
import warnings

import pytest
import torch

from workbench.patching.refusal import (
    arditi_splits,
    post_instruction_tokens,
    refusal_direction,
    resolve_refusal_tokens,
)
from workbench.patching.refusal_prompts import prompt_sets


@pytest.fixture(scope="module")
def rd(embedded, data_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the filter / induce fallbacks: SmolLM2 rarely refuses
        return refusal_direction(embedded, n_train=16, n_val=6, layers=[4, 8, 12, 16], data_dir=data_dir,
                                 progress=False)


def test_template_tokens_of_the_embedded_model(embedded):
    assert embedded.to_str_tokens(torch.tensor(post_instruction_tokens(embedded))) == \
        ["<|im_end|>", "\n", "<|im_start|>", "ass", "istant", "\n"]
    tok = embedded.tokenizer
    assert resolve_refusal_tokens(embedded) == [tok.convert_tokens_to_ids("I"), tok.convert_tokens_to_ids("As")]


def test_default_data_are_arditis_samples(data_dir):
    """The pipeline's random.seed(42) and its order of random.sample calls give the same prompts."""
    folder = data_dir / "refusal_direction" / "dataset" / "splits"
    raw = {name: [row["instruction"] for row in json.loads((folder / f"{name}.json").read_text())]
           for name in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}
    random.seed(42)
    expected = {name: random.sample(raw[name], n) for name, n in
                (("harmful_train", 128), ("harmless_train", 128), ("harmful_val", 32), ("harmless_val", 32))}
    assert prompt_sets(None, None, None, None, 42, data_dir) == expected
    assert arditi_splits(data_dir) == raw


def test_a_direction_is_found(embedded, rd):
    assert len(rd.frame) == 4 * 6 and rd.frame["selected"].sum() == 1
    assert rd.direction.hook == f"blocks.{rd.layer}.hook_resid_pre" and rd.layer in (4, 8, 12, 16)
    assert rd.direction.provenance["data"] == "arditi2024 splits"
    assert rd.direction.provenance["model_fingerprint"] == embedded.source.fingerprint
    kept = rd.frame[rd.frame["filtered"].isna()]
    assert rd.info["ablation_score"] == kept["ablation_score"].min()


def test_bypass_lowers_refusal_beyond_the_placebo(embedded, rd):
    harmful = rd.prompts["harmful_val"]
    none = rd.scores(harmful)
    with rd.bypass():
        assert len(embedded.active_interventions()) == 3
        bypassed = rd.scores(harmful)
    with rd.placebo(seed=0).bypass():
        placebo = rd.scores(harmful)
    assert bypassed.mean() == pytest.approx(rd.info["ablation_score"], abs=1e-3)  # the frame's number
    assert bypassed.mean() < none.mean() and bypassed.mean() < placebo.mean()
    harmless = rd.prompts["harmless_val"]
    with rd.induce():
        induced = rd.scores(harmless)
    with rd.placebo(seed=0).induce():
        induced_placebo = rd.scores(harmless)
    assert induced.mean() > rd.scores(harmless).mean() and induced.mean() > induced_placebo.mean()
