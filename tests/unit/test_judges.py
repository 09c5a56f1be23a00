"""Refusal judges and their agreement with labels, on made-up lists and harmless sentences.

No shared data: the keyword lists are small JSON files in tmp_path in the format of
``refusal_judges/refusal_substrings.json``; the texts are benign sentences written here.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_score, recall_score
from tiny_hf import tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from workbench.common.errors import DataError, MissingDataError
from workbench.evals import hf_judges, judges
from workbench.evals.agreement import XSTEST_FILES, cohen_kappa, judge_agreement, xstest_labelled
from workbench.evals.judges import (
    CyberSecEvalJudge,
    JudgeError,
    KeywordJudge,
    available_judges,
    get_judge,
    refusal_first_tokens,
)
from workbench.evals.metrics import bootstrap_ci

DEFAULT_KEY = judges.DEFAULT_JUDGE.split(":", 1)[1]

LISTS = {
    "_about": "made-up lists for the tests, in the format of refusal_substrings.json",
    "exact_list": {"source": "tests", "match": "case-sensitive substring anywhere in the generation",
                   "strings": ["No thanks", "Not today"]},
    "folded_list": {"source": "tests", "match": "case-INsensitive substring (completion.lower())",
                    "strings": ["rather not", "No Thanks"]},
    "prefix_list": {"source": "tests", "match": "completion.lower().strip().startswith(any) -> refusal",
                    "strings": ["nope", "not today", "no,"]},
    "regex_list": {
        "source": "tests", "match": "case-insensitive regex over the first chars, with exceptions",
        "REFUSAL_SCANNING_PREFIX_SIZE": 30,
        "REFUSAL_PATTERNS": [r"I (?:will not|won't) (?:bake|paint)", r"Sorry(?:,| ) no cake"],
        "NON_REFUSAL_PATTERNS": [r"(?:make|makes) sense"],
        "LANGUAGE_LIST": ["python", "shell script"],
        "CODE_INTRODUCTION": ["here is", "here's"],
    },
    DEFAULT_KEY: {"source": "tests", "match": "case-sensitive substring", "strings": ["Maybe later"]},
    "first_tokens": {"source": "tests", "match": "first-token ids",
                     "tokens": {"FAMILY_A": {"token_ids": [7]}, "FAMILY_B": {"token_ids": [3, 9]}}},
}


def write_lists(root, lists=LISTS):
    folder = root / "refusal_judges"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refusal_substrings.json").write_text(json.dumps(lists), encoding="utf-8")
    return root


@pytest.fixture
def data(tmp_path):
    return write_lists(tmp_path)


# --- keyword lists and their rules ---------------------------------------------------------


def test_available_judges_lists_every_keyword_entry_in_file_order(data):
    assert available_judges(data) == ["keyword:exact_list", "keyword:folded_list", "keyword:prefix_list",
                                      "keyword:regex_list", f"keyword:{DEFAULT_KEY}"]
    assert refusal_first_tokens(data) == {"FAMILY_A": [7], "FAMILY_B": [3, 9]}


def test_each_list_gets_its_own_rule(data):
    rules = {s: getattr(get_judge(s, data_dir=data), "rule", None) for s in available_judges(data)}
    assert rules == {"keyword:exact_list": "substring", "keyword:folded_list": "substring_nocase",
                     "keyword:prefix_list": "startswith", "keyword:regex_list": None,
                     f"keyword:{DEFAULT_KEY}": "substring"}
    assert isinstance(get_judge("keyword:regex_list", data_dir=data), CyberSecEvalJudge)


CASES = [
    # (list, completion, refusal, reason)
    ("exact_list", "No thanks, I will walk to the park.", True, "No thanks"),
    ("exact_list", "Well... Not today, the shop is shut.", True, "Not today"),  # anywhere
    ("exact_list", "no thanks, I will walk.", False, ""),  # case-sensitive
    ("folded_list", "I would RATHER NOT sing tonight.", True, "rather not"),
    ("folded_list", "no thanks, and I would rather not.", True, "No Thanks"),  # earliest phrase, as listed
    ("folded_list", "Sure, the river is wide.", False, ""),
    ("prefix_list", "  Nope, the bakery opens at nine.", True, "nope"),  # stripped, lowercased
    ("prefix_list", "NOT TODAY: the museum is closed.", True, "not today"),
    ("prefix_list", "The answer is nope, says the sign.", False, ""),  # not at the start
    ("prefix_list", "Nothing here.", False, ""),  # "no," needs the comma
    ("regex_list", "I won't bake bread today.", True, "I won't bake"),
    ("regex_list", "sorry, no cake is left.", True, "sorry, no cake"),  # case-insensitive
    ("regex_list", "That makes sense. I won't bake.", False, "not a refusal: 'makes sense'"),
    ("regex_list", "Here is a Python loop. I won't paint.", False, "not a refusal: 'here is' with 'python'"),
    ("regex_list", "```a``` and ```b``` I won't paint.", False, "not a refusal: 4 code fences"),
    ("regex_list", "x" * 30 + "I won't bake bread.", False, ""),  # beyond the 30-character prefix
    ("regex_list", "I won't \uff42\uff41\uff4b\uff45 bread.", True, "I won't bake"),  # NFKD: fullwidth letters
    ("regex_list", "I\u00a0won't paint the fence.", True, "I won't paint"),  # NFKD: no-break space
]


@pytest.mark.parametrize("key, completion, refusal, reason", CASES)
def test_keyword_judges_match_by_their_rule(data, key, completion, refusal, reason):
    verdicts = get_judge(f"keyword:{key}", data_dir=data).judge(["a question"], [completion])
    assert verdicts["refusal"].tolist() == [refusal]
    assert verdicts["reason"].tolist() == [reason]


def test_verdict_frame_has_one_row_per_completion(data):
    judge = get_judge("keyword:prefix_list", data_dir=data)
    completions = ["Nope.", "Sure, here is the recipe.", "No, it is Tuesday.", ""]
    verdicts = judge.judge(None, completions)
    assert list(verdicts.columns) == ["refusal", "reason"]
    assert verdicts["refusal"].dtype == bool and verdicts.index.tolist() == [0, 1, 2, 3]
    assert verdicts["refusal"].tolist() == [True, False, True, False]
    assert judge.judge([], []).shape == (0, 2)


def test_length_mismatch_and_non_strings_are_named(data):
    judge = get_judge("keyword:exact_list", data_dir=data)
    with pytest.raises(ValueError, match=r"3 prompts but 2 completions"):
        judge.judge(["a", "b", "c"], ["x", "y"])
    with pytest.raises(JudgeError, match=r"completion 1 is float"):
        judge.judge(None, ["fine", float("nan")])


def test_bad_specs_and_entries_say_what_to_do(data, tmp_path):
    with pytest.raises(JudgeError, match=r"unknown judge 'magic'.*keyword:exact_list.*hf:PATH"):
        get_judge("magic", data_dir=data)
    with pytest.raises(JudgeError, match=r"no keyword list 'nothing'.*exact_list, folded_list"):
        get_judge("keyword:nothing", data_dir=data)
    with pytest.raises(JudgeError, match=r"'first_tokens' is not a keyword list"):
        get_judge("keyword:first_tokens", data_dir=data)
    odd = write_lists(tmp_path / "odd", {"odd": {"match": "fuzzy", "strings": ["x"]}})
    with pytest.raises(DataError, match=r"refusal_substrings.json: entry 'odd'.*'fuzzy'"):
        available_judges(odd)
    empty = write_lists(tmp_path / "empty", {"empty": {"match": "case-sensitive substring", "strings": []}})
    with pytest.raises(DataError, match=r"entry 'empty'.*non-empty list"):
        get_judge("keyword:empty", data_dir=empty)
    (tmp_path / "bare").mkdir()
    with pytest.raises(MissingDataError, match=r"bare/refusal_judges/refusal_substrings.json, which does not exist"):
        get_judge("keyword:exact_list", data_dir=tmp_path / "bare")
    with pytest.raises(MissingDataError, match=r"does not exist"):
        get_judge("keyword:exact_list", data_dir=tmp_path / "nowhere")


def test_default_judge_is_the_constant(data):
    assert get_judge(data_dir=data).name == judges.DEFAULT_JUDGE


# --- judges of one's own -------------------------------------------------------------------


class PoliteJudge:
    name = "polite"

    def __init__(self, frame=None):
        self.frame = frame

    def judge(self, prompts, completions):
        if self.frame is not None:
            return self.frame
        return pd.DataFrame({"refusal": ["please" in c for c in completions], "reason": None, "score": 0.5})


def test_a_users_judge_passes_through_checked():
    judge = get_judge(PoliteJudge())
    assert judge.name == "polite"
    verdicts = judge.judge(["q1", "q2"], ["yes please", "no"])
    assert verdicts["refusal"].tolist() == [True, False] and verdicts["reason"].tolist() == ["", ""]
    assert "score" in verdicts.columns
    assert get_judge(judge) is judge  # already checked: not wrapped twice


@pytest.mark.parametrize("frame, problem", [
    (pd.DataFrame({"refusal": [True]}), r"no column\(s\) \['reason'\]"),
    (pd.DataFrame({"refusal": [True, False, True], "reason": ""}), r"3 rows for 2 completions"),
    (pd.DataFrame({"refusal": ["yes", "no"], "reason": ""}), r"'refusal' must be True/False; row 0"),
    (pd.DataFrame({"refusal": [True, None], "reason": ""}), r"row 1"),
    ([True, False], r"returned list, not a pandas DataFrame"),
])
def test_a_users_judge_with_bad_output_is_named(frame, problem):
    with pytest.raises(JudgeError, match=problem):
        get_judge(PoliteJudge(frame)).judge(None, ["a", "b"])


def test_objects_that_are_not_judges_are_refused():
    class Nameless:
        def judge(self, prompts, completions): ...

    class NotCallable:
        name, judge = "x", 3

    with pytest.raises(JudgeError, match=r"non-empty string 'name'"):
        get_judge(Nameless())
    with pytest.raises(JudgeError, match=r"judge 'x': 'judge' must be a method"):
        get_judge(NotCallable())


# --- agreement -----------------------------------------------------------------------------

# Made-up, harmless: a judge using prefix_list ("nope", "not today", "no,") against hand labels.
LABELLED = pd.DataFrame([
    ("Is the park open?", "Nope, it closes at dusk.", True),             # tp
    ("Can you sing?", "Not today, my voice is tired.", True),             # tp
    ("Will it rain?", "No, the sky is clear.", False),                    # fp: a plain answer
    ("Is this tea?", "No, it is coffee.", False),                         # fp
    ("Help me paint?", "I would rather not, sorry.", True),               # fn: no listed phrase
    ("Bake a cake?", "I'm unable to bake right now.", True),              # fn
    ("Bake bread?", "Sorry, the oven is cold.", True),                    # fn
    ("What is two plus two?", "Four.", False),                            # tn
    ("Name a colour.", "Blue.", False),                                   # tn
    ("Recommend a book?", "Try a novel about the sea.", False),           # tn
    ("Where is the library?", "On the main street.", False),              # tn
    ("Nope?", "Nope is a word people use.", True),                        # tp (labelled a refusal)
], columns=["prompt", "completion", "refusal"])
HAND = {"tp": 3, "fp": 2, "fn": 3, "tn": 4}


def test_agreement_matches_hand_counts_and_sklearn(data):
    agreement = judge_agreement("keyword:prefix_list", LABELLED, data_dir=data, n_boot=300)
    confusion = agreement.confusion
    assert confusion.loc["refusal", "refusal"] == HAND["tp"] and confusion.loc["compliance", "refusal"] == HAND["fp"]
    assert confusion.loc["refusal", "compliance"] == HAND["fn"] and confusion.loc["compliance", "compliance"] == HAND["tn"]
    assert confusion.index.name == "human" and confusion.columns.name == "judge"
    assert agreement.n == 12 and agreement.accuracy == pytest.approx((3 + 4) / 12)
    human, judged = LABELLED["refusal"].to_numpy(), agreement.examples["judged"].to_numpy()
    assert agreement.accuracy == pytest.approx(accuracy_score(human, judged))
    assert agreement.kappa == pytest.approx(cohen_kappa_score(human, judged))
    p_o, p_e = 7 / 12, (6 / 12) * (5 / 12) + (6 / 12) * (7 / 12)  # Cohen 1960, by hand
    assert agreement.kappa == pytest.approx((p_o - p_e) / (1 - p_e))
    assert agreement.precision == pytest.approx(precision_score(human, judged)) == pytest.approx(3 / 5)
    assert agreement.recall == pytest.approx(recall_score(human, judged)) == pytest.approx(3 / 6)
    assert agreement.human_rate == pytest.approx(0.5) and agreement.judge_rate == pytest.approx(5 / 12)
    assert agreement.examples["agree"].sum() == 7 and agreement.examples["reason"][0] == "nope"


def _sk(fn, **kwargs):
    def metric(human, judged):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(human, judged, **kwargs))
    return metric


def test_agreement_intervals_are_the_projects_bootstrap_of_sklearn_metrics(data):
    agreement = judge_agreement("keyword:prefix_list", LABELLED, data_dir=data, seed=3, n_boot=400)
    arrays = [LABELLED["refusal"].to_numpy(), agreement.examples["judged"].to_numpy()]
    oracles = {"accuracy": _sk(accuracy_score), "kappa": _sk(cohen_kappa_score, labels=[False, True]),
               "precision": _sk(precision_score, zero_division=np.nan),
               "recall": _sk(recall_score, zero_division=np.nan)}
    for metric, fn in oracles.items():
        expected = bootstrap_ci(fn, arrays, n_boot=400, seed=3)
        assert agreement.ci[metric] == pytest.approx(expected), metric
        low, high = agreement.ci[metric]
        assert low <= getattr(agreement, metric) <= high
    again = judge_agreement("keyword:prefix_list", LABELLED, data_dir=data, seed=3, n_boot=400)
    assert again.ci == agreement.ci


def test_agreement_frame_str_and_dict(data):
    agreement = judge_agreement("keyword:prefix_list", LABELLED, data_dir=data, n_boot=200)
    frame = agreement.frame
    assert list(frame.columns) == ["judge", "metric", "value", "ci_low", "ci_high", "n"]
    assert frame.set_index("metric").loc[["tp", "fp", "fn", "tn"], "value"].tolist() == [3, 2, 3, 4]
    assert frame.set_index("metric").loc["kappa", "value"] == pytest.approx(agreement.kappa)
    line = str(agreement)
    assert line.startswith("keyword:prefix_list agrees with the given human labels: accuracy 0.58 [")
    assert "kappa " in line and line.endswith("(n=12)") and "\n" not in line
    summary = json.loads(json.dumps(agreement.to_dict()))
    assert summary["confusion"]["refusal"]["compliance"] == 3 and summary["n"] == 12


def test_cohen_kappa_equals_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(50) < 0.6, rng.random(50) < 0.4
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert np.isnan(cohen_kappa(np.ones(4, bool), np.ones(4, bool)))  # p_e == 1: undefined


def test_labelled_frames_are_checked(data):
    with pytest.raises(DataError, match=r"no column\(s\) \['refusal'\]"):
        judge_agreement("keyword:prefix_list", LABELLED.drop(columns="refusal"), data_dir=data)
    with pytest.raises(DataError, match=r"row 1: refusal must be True/False"):
        judge_agreement("keyword:prefix_list", LABELLED.assign(refusal=[True, None] + [False] * 10), data_dir=data)


def write_xstest(root, bad_label=False):
    """Two made-up files in XSTest's labelled-completions format (harmless rows)."""
    rows = [(1, "homonyms", "How do I kill a stuck program?", "Nope, not that way.", "2_full_refusal"),
            (2, "homonyms", "How do I beat eggs?", "Use a whisk.", "1_full_compliance"),
            (3, "contrast_x", "Where is the bank?", "No, I can only say it is near.", "3_partial_refusal")]
    folder = root / "xstest" / "labelled_completions"
    folder.mkdir(parents=True)
    for index, rel in enumerate(XSTEST_FILES):
        frame = pd.DataFrame(rows, columns=["id", "type", "prompt", "completion", "final_label"])
        frame.insert(4, "annotation_1", frame["final_label"])
        if bad_label and index == 1:
            frame.loc[2, "final_label"] = "4_unsure"
        frame.to_csv(root / rel, index=False)
    return root


def test_default_labels_are_xstest_with_partial_refusal_as_refusal(data):
    write_xstest(data)
    labelled = xstest_labelled(data)
    assert labelled["refusal"].tolist() == [True, False, True] * 2
    assert labelled["source"].tolist() == ["llama2orig"] * 3 + ["llama2new"] * 3
    assert labelled["example_id"][0] == "xstest_llama2orig:1"
    agreement = judge_agreement("keyword:prefix_list", data_dir=data, n_boot=50)
    assert agreement.n == 6 and agreement.accuracy == 1.0 and "partial_refusal" in agreement.mapping
    assert str(agreement).startswith("keyword:prefix_list agrees with XSTest human labels: accuracy 1.00")


def test_xstest_bad_label_names_file_and_line(tmp_path):
    write_xstest(tmp_path, bad_label=True)
    with pytest.raises(DataError, match=r"llama2new.csv, line 4: final_label '4_unsure'"):
        xstest_labelled(tmp_path)


# --- local Hugging Face judges -------------------------------------------------------------

WORDS = "yes no Yes No q a : ? . , the cake is ready sorry can not help with that sure here you go".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + list(dict.fromkeys(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def save_tiny(folder, cls, safe=True, **config):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    model = cls(tiny_config(len(tokenizer), **config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    folder.mkdir(parents=True)
    if safe:
        model.save_pretrained(folder)
    else:  # a pickled checkpoint, which judges must refuse
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return model, tokenizer


COMPLETIONS = ["sorry , can not help with that .", "sure , here you go", "the cake is ready ."]
PROMPTS = ["q the cake ?", "q help ?", "q is the cake ready ?"]


def test_hf_classifier_judge_equals_the_models_softmax(tmp_path):
    folder = tmp_path / "cls"
    model, tokenizer = save_tiny(folder, LlamaForSequenceClassification, num_labels=2,
                                 id2label={0: "ANSWER", 1: "REFUSAL"}, label2id={"ANSWER": 0, "REFUSAL": 1})
    judge = get_judge(f"hf:{folder}?batch_size=2")
    verdicts = judge.judge(PROMPTS, COMPLETIONS)
    with torch.no_grad():
        expected = [torch.softmax(model(**tokenizer(c, return_tensors="pt")).logits.double(), -1)[0, 1].item()
                    for c in COMPLETIONS]
    assert verdicts["score"].to_numpy() == pytest.approx(expected, abs=1e-5)  # padded batch vs alone
    assert verdicts["refusal"].tolist() == [p >= 0.5 for p in expected]
    assert verdicts["reason"][0] == f"p(REFUSAL)={expected[0]:.2f}" and judge.name == "hf:cls"
    other = get_judge(f"hf:{folder}?label=answer").judge(None, COMPLETIONS)
    assert other["score"].to_numpy() == pytest.approx(1 - np.array(expected), abs=1e-5)


def test_hf_folders_that_cannot_be_judges_are_named(tmp_path):
    unnamed = tmp_path / "unnamed"
    save_tiny(unnamed, LlamaForSequenceClassification, num_labels=2, id2label={0: "A", 1: "B"}, label2id={"A": 0, "B": 1})
    with pytest.raises(JudgeError, match=rf"{re.escape(str(unnamed))}: no single label containing 'refus'.*\['A', 'B'\].*label=NAME"):
        get_judge(f"hf:{unnamed}")
    pickled = tmp_path / "pickled"
    save_tiny(pickled, LlamaForCausalLM, safe=False)
    with pytest.raises(JudgeError, match=rf"{re.escape(str(pickled))}: no .safetensors weights"):
        get_judge(f"hf:{pickled}")
    with pytest.raises(JudgeError, match=r"nowhere: no config.json"):
        get_judge(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(JudgeError, match=r"unknown option\(s\) \['colour'\]"):
        get_judge(f"hf:{unnamed}?colour=red")


def test_hf_causal_judge_reads_yes_and_no_at_the_last_position(tmp_path):
    folder = tmp_path / "causal"
    model, tokenizer = save_tiny(folder, LlamaForCausalLM)
    model.config._attn_implementation = "eager"
    template = "q : {behavior} a : {generation} ? the"
    judge = hf_judges.HFCausalJudge(folder, template, batch_size=2)
    verdicts = judge.judge(PROMPTS, COMPLETIONS)
    yes, no = [tokenizer.convert_tokens_to_ids(w) for w in ("Yes", "yes")], [tokenizer.convert_tokens_to_ids(w)
                                                                             for w in ("No", "no")]
    assert sorted(judge.yes_ids) == sorted(yes) and sorted(judge.no_ids) == sorted(no)
    expected = []
    for p, c in zip(PROMPTS, COMPLETIONS, strict=True):
        ids = tokenizer(template.replace("{behavior}", p).replace("{generation}", c), return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**ids).logits[0, -1].double(), -1)
        expected.append((probs[no].sum() / (probs[yes].sum() + probs[no].sum())).item())
    assert verdicts["score"].to_numpy() == pytest.approx(expected, abs=1e-5)  # left padding changes nothing
    assert verdicts["reason"][1] == f"p(refusal)={expected[1]:.2f}"
    flipped = hf_judges.HFCausalJudge(folder, template, yes_means="refusal").judge(PROMPTS, COMPLETIONS)
    assert flipped["score"].to_numpy() == pytest.approx(1 - np.array(expected), abs=1e-5)
    (tmp_path / "t.json").write_text(json.dumps({"prompt": template}))
    assert get_judge(f"hf:{folder}?template={tmp_path / 't.json'}").template == template
    with pytest.raises(JudgeError, match=r"no \{generation\} placeholder"):
        (tmp_path / "bad.txt").write_text("q : {behavior}")
        hf_judges.HFCausalJudge(folder, str(tmp_path / "bad.txt"))
    data = tmp_path / "data" / "refusal_judges"  # the default template: HarmBench's file, from the data dir
    data.mkdir(parents=True)
    (data / "harmbench_llama2_cls_prompt.json").write_text(json.dumps({"prompt": template, "description": "test"}))
    assert get_judge(f"hf:{folder}", data_dir=tmp_path / "data").template == template


def test_hf_judges_never_run_a_folders_own_code(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    word_tokenizer().save_pretrained(folder)
    marker = tmp_path / "ran.txt"
    (folder / "judge_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "judge_code", "architectures": ["JudgeForSequenceClassification"],
        "auto_map": {"AutoConfig": "judge_code.Config", "AutoModelForSequenceClassification": "judge_code.Model"},
        "id2label": {"0": "answer", "1": "refusal"}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(JudgeError, match=rf"(?s){re.escape(str(folder))}: cannot load it as a sequence "
                                         r"classifier \(never with the folder's own code.*custom code"):
        get_judge(f"hf:{folder}")
    assert not marker.exists()


def test_keyword_judge_objects_build_without_data():
    judge = KeywordJudge("mine", ["maybe later"], "startswith")
    assert judge.judge(None, ["Maybe later, friend."])["reason"].tolist() == ["maybe later"]
    with pytest.raises(JudgeError, match=r"unknown match rule 'fuzzy'"):
        KeywordJudge("mine", ["x"], "fuzzy")
