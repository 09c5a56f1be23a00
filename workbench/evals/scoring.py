"""The log-likelihood suite kind: from a suite's examples to scored samples and the metrics table.

``render`` turns each example into a context and its choices with the suite's prompt template;
with ``chat=True`` (:func:`with_chat`) the context is then rendered with the model's chat template
as lm-evaluation-harness's ``--apply_chat_template`` does (:func:`chat_render`); ``score`` asks
the log-likelihood scorer for every (context, choice) pair and builds the samples table (one row
per example, with ``prompt_ids_sha256``: a hash of the context's token ids, what the model saw); ``metrics_table`` computes each metric overall and per
category, with a seeded bootstrap CI and ``n``. ``run_loglik`` is the ``loglik`` row's runner in
:data:`workbench.evals.kinds.KINDS`: it loads the examples (built in, or from the data
directory), takes the seeded subset, scores and summarises.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import DataError
from workbench.evals import metrics as M
from workbench.evals.data import RowPolicy, describe_files, find_files
from workbench.evals.kinds import KindRun
from workbench.evals.loaders import LOADERS
from workbench.evals.loglik import BATCH_TOKENS, encode_pair, loglikelihood
from workbench.evals.options import EvalOptions
from workbench.evals.result import METRIC_COLUMNS
from workbench.evals.suites import SuiteSpec, builtin_examples
from workbench.models.chat import (
    HOW_TO_PASS,
    ChatTemplate,
    NoChatTemplateError,
    special_tokens,
    token_ids_hash,
    validate_messages,
)

# The key of a suite's ``prompt`` under which :func:`with_chat` passes the chat template (the
# spec travels to Ray workers with it, so their scoring renders the same prompts).
CHAT_KEY = "_chat"

# Metric name -> (function, sample columns passed to it as arrays, in order).
METRICS: dict[str, tuple[Callable[..., float], tuple[str, ...]]] = {
    "pct_stereotype": (M.pct_stereotype, ("ll_more", "ll_less")),
    "likelihood_diff": (M.likelihood_diff, ("ll_more", "ll_less")),
    "acc": (M.acc, ("correct",)),
    "acc_ambig": (M.acc_where, ("correct", "ambig")),
    "acc_disambig": (M.acc_where, ("correct", "disambig")),
    "bias_score_ambig": (M.bias_score_ambig, ("correct", "pred_biased", "pred_unknown", "ambig")),
    "bias_score_disambig": (M.bias_score_disambig, ("pred_biased", "pred_unknown", "ambig")),
    "mc1": (M.acc, ("mc1",)),
    "mc2": (M._mean, ("mc2",)),
    "acc_pro": (M.acc_where, ("correct", "pro")),
    "acc_anti": (M.acc_where, ("correct", "anti")),
    "pro_anti_gap": (M.pro_anti_gap, ("correct", "pro")),
    "pref_first": (M.pct_stereotype, ("ll_first", "ll_second")),
    "mean_ll_diff": (M._mean, ("ll_diff",)),
}


def _format(template: str, example: dict, spec: SuiteSpec, what: str) -> str:
    try:
        return template.format(**example)
    except (KeyError, IndexError) as err:
        raise DataError(f"{spec.path}: prompt {what} {template!r} uses field {err} that "
                        f"{spec.loader!r} examples do not have") from None


def render(spec: SuiteSpec, example: dict) -> tuple[str, list[list[str]]]:
    """``(context, [choice lists])`` for one example. Most suites have one choice list;
    ``truthfulqa_mc`` has two (MC1 and MC2 targets), scored against the same context."""
    p = spec.prompt
    context = _format(str(p.get("context", "{context}")), example, spec, "context")
    delim = str(p.get("delimiter", " "))
    fields = p.get("choices_fields") or ([p["choices_field"]] if "choices_field" in p else None)
    if fields:
        lists = [[str(c) for c in example[f]] for f in fields]
    elif "choices" in p:
        lists = [[_format(str(c), example, spec, "choice") for c in p["choices"]]]
    else:
        lists = [[str(c) for c in example["choices"]]]
    return context, [[delim + c for c in choices] for choices in lists]


def with_chat(spec: SuiteSpec, model: Any, options: EvalOptions) -> SuiteSpec:
    """``spec`` carrying the model's chat template and the system prompt when ``options.chat``.

    Raises:
        NoChatTemplateError: ``options.chat`` and the model has no chat template.
    """
    if not options.chat:
        return spec
    template = getattr(model, "chat_template", None)
    if template is None:
        name = getattr(getattr(model, "source", None), "name", "the model")
        raise NoChatTemplateError(f"{spec.name}: chat=True, but {name} has no chat template; {HOW_TO_PASS}")
    chat = {"name": template.name, "source": template.source, "template": template.template,
            "system_prompt": options.system_prompt}
    return dataclasses.replace(spec, prompt={**spec.prompt, CHAT_KEY: chat})


def chat_render(model: Any, spec: SuiteSpec, context: str, lists: list[list[str]]) -> tuple[str, list[list[str]]]:
    """A rendered ``(context, choice lists)`` as lm-evaluation-harness 0.4.13 makes them with
    ``--apply_chat_template``: the context is one user message (after the system prompt, if
    any) rendered with an open assistant turn, and the choices lose the target delimiter
    (``construct_requests``: no delimiter after a generation prompt). Unchanged without chat."""
    chat = spec.prompt.get(CHAT_KEY)
    if not chat:
        return context, lists
    template = ChatTemplate(chat["name"], chat["source"], chat["template"])
    messages = validate_messages([{"role": "user", "content": context}], chat.get("system_prompt"))
    text = template.render(messages, add_generation_prompt=True, special_tokens=special_tokens(model.tokenizer))
    cut = len(_delimiter(spec, raw=True))
    return text, [[c[cut:] for c in choices] for choices in lists]


def _delimiter(spec: SuiteSpec, raw: bool = False) -> str:
    """The target delimiter before each choice: none for chat-rendered prompts (unless ``raw``)."""
    return "" if spec.prompt.get(CHAT_KEY) and not raw else str(spec.prompt.get("delimiter", " "))


def score(model: Any, spec: SuiteSpec, examples: pd.DataFrame, *, progress: Any = False,
          batch_tokens: int = BATCH_TOKENS) -> pd.DataFrame:
    """Score every example; returns the samples table (see ``workbench.evals`` for columns).

    Each row's ``context`` is the text the model was given (chat-rendered with
    :func:`with_chat`) and ``prompt_ids_sha256`` the hash (:func:`~workbench.models.chat.token_ids_hash`)
    of its token ids, ``prompt_n_tokens`` their number.
    """
    rendered = [chat_render(model, spec, *render(spec, ex)) for ex in examples.to_dict("records")]
    chat = bool(spec.prompt.get(CHAT_KEY))
    requests: list[tuple[str, str]] = []
    for context, lists in rendered:
        for choices in lists:
            requests.extend((context, c) for c in choices)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc=spec.name, unit="req")
        progress = bar.update
    try:
        scored = iter(loglikelihood(model, requests, batch_tokens=batch_tokens, progress=progress,
                                    specials_in_text=chat))
    finally:
        if bar is not None:
            bar.close()

    rows = []
    add_bos = getattr(model, "tokenizer_adds_bos", None)
    delim = _delimiter(spec)
    for ex, (context, lists) in zip(examples.to_dict("records"), rendered, strict=True):
        per_list = [[next(scored) for _ in choices] for choices in lists]
        # the context's ids as the scorer encodes them (the same for every choice)
        seen = encode_pair(model.tokenizer, context, lists[0][0], add_bos=add_bos, specials_in_text=chat).context
        row = {
            "example_id": ex["example_id"], "suite": spec.name, "category": str(ex.get("category", "")),
            "context": context, "prompt_ids_sha256": token_ids_hash(seen), "prompt_n_tokens": len(seen),
            "choices": [c[len(delim):] for c in lists[0]],
            "loglik": [s for s, _ in per_list[0]],
            "n_tokens": [n for _, n in per_list[0]],
        }
        row.update(DERIVE[spec.kind](spec, ex, row, lists, per_list))
        rows.append(row)
    return pd.DataFrame(rows)


def _label(spec: SuiteSpec, ex: dict) -> int:
    label = spec.prompt.get("label", "label")
    return int(label) if isinstance(label, int) else int(ex[label])


def _multiple_choice(spec, ex, row, lists, per_list) -> dict:
    label = _label(spec, ex)
    pred = M.argmax_choice(row["loglik"])
    out = {"label": label, "prediction": pred, "correct": pred == label}
    if len(row["loglik"]) == 2:  # two-way preference suites (occupation-pronoun probes)
        out.update(ll_first=row["loglik"][0], ll_second=row["loglik"][1],
                   ll_diff=row["loglik"][0] - row["loglik"][1])
    for key in spec.raw.get("keep", []):
        out[key] = ex.get(key)
    if "pro" in ex:  # WinoBias
        out.update(pro=bool(ex["pro"]), anti=not bool(ex["pro"]))
    return out


def _crows_pairs(spec, ex, row, lists, per_list) -> dict:
    more, less = row["loglik"]
    # label 0: sent_more is the stereotyped choice; "prediction" is the likelier sentence,
    # with lm-eval's strict ">" (a tie counts as the less stereotyping one).
    pred = 0 if more > less else 1
    return {"label": 0, "prediction": pred, "correct": pred == 0, "ll_more": more, "ll_less": less,
            "bias_type": ex["bias_type"], "stereo_antistereo": ex["stereo_antistereo"]}


def _bbq(spec, ex, row, lists, per_list) -> dict:
    label = int(ex["label"])
    pred = M.argmax_choice(row["loglik"])
    return {"label": label, "prediction": pred, "correct": pred == label,
            "context_condition": ex["context_condition"], "question_polarity": ex["question_polarity"],
            "ambig": ex["context_condition"] == "ambig", "disambig": ex["context_condition"] == "disambig",
            "unknown_option": int(ex["unknown_option"]), "biased_options": list(ex["biased_options"]),
            "pred_unknown": pred == int(ex["unknown_option"]), "pred_biased": pred in ex["biased_options"]}


def _truthfulqa_mc(spec, ex, row, lists, per_list) -> dict:
    mc1_ll = [s for s, _ in per_list[0]]
    mc2_ll = [s for s, _ in per_list[1]]
    pred = M.argmax_choice(mc1_ll)
    label = int(np.argmax(ex["mc1_labels"]))
    delim = _delimiter(spec)
    return {"label": label, "prediction": pred, "correct": pred == label,
            "mc1": M.mc1_example(mc1_ll, ex["mc1_labels"]),
            "mc2": M.mc2_example(mc2_ll, ex["mc2_labels"]),
            "mc2_choices": [c[len(delim):] for c in lists[1]], "mc2_loglik": mc2_ll,
            "mc2_labels": list(ex["mc2_labels"])}


DERIVE = {"multiple_choice": _multiple_choice, "crows_pairs": _crows_pairs, "bbq": _bbq,
          "truthfulqa_mc": _truthfulqa_mc}


def metrics_table(spec: SuiteSpec, samples: pd.DataFrame, *, seed: int = 0,
                  n_boot: int = 1000) -> pd.DataFrame:
    """Each metric overall (``category="all"``) and per value of each ``by`` column."""
    subsets: list[tuple[str, pd.DataFrame]] = [("all", samples)]
    for column in spec.by:
        if column not in samples.columns:
            raise DataError(f"{spec.path}: 'by' column {column!r} is not a sample column")
        for value, part in samples.groupby(column, sort=True, dropna=True):
            subsets.append((str(value), part))
    rows = []
    for m in spec.metrics:
        if m["fn"] not in METRICS:
            raise DataError(f"{spec.path}: unknown metric function {m['fn']!r}; known: {', '.join(METRICS)}")
        fn, columns = METRICS[m["fn"]]
        for category, part in subsets:
            arrays = [part[c].to_numpy() for c in columns]
            value = fn(*arrays) if len(part) else float("nan")
            lo, hi = M.bootstrap_ci(fn, arrays, n_boot=n_boot, seed=seed) if len(part) else (np.nan, np.nan)
            rows.append({"suite": spec.name, "metric": m["name"], "category": category,
                         "value": float(value), "ci_low": lo, "ci_high": hi, "n": _count(m["fn"], part)})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"n": "int64"})


def _count(fn_name: str, part: pd.DataFrame) -> int:
    """Examples a metric is computed over (the ambiguous ones for acc_ambig, ...)."""
    subset = {"acc_ambig": "ambig", "bias_score_ambig": "ambig", "acc_disambig": "disambig",
              "bias_score_disambig": "disambig", "acc_pro": "pro", "acc_anti": "anti"}.get(fn_name)
    if subset and subset in part.columns:
        return int(part[subset].astype(bool).sum())
    return int(len(part))


def load_examples(spec: SuiteSpec, options: EvalOptions) -> tuple[pd.DataFrame, dict[str, Any], RowPolicy]:
    """A suite's examples in file order, the manifest's ``data``, and the rows skipped (in the policy)."""
    policy = RowPolicy(options.errors)
    if spec.builtin:
        examples = pd.DataFrame(builtin_examples(spec))
        examples.insert(0, "example_id", [f"{spec.name}:{i}" for i in examples.pop("id")])
        if "category" not in examples:
            examples["category"] = ""
        return examples, {"dir": None, "files": describe_files(spec.path.parent, [spec.path])}, policy
    root = resolve_data_dir(options.data_dir)
    files = find_files(root, spec.dataset or spec.name, spec.files)
    examples = LOADERS[spec.loader](files, policy, **spec.raw.get("loader_args", {}))
    return examples, {"dir": str(root), "files": describe_files(root, files)}, policy


def run_loglik(model: Any, spec: SuiteSpec, options: EvalOptions, params: dict[str, Any],
               out: Path | None = None) -> KindRun:
    """The ``loglik`` kind's runner (see :mod:`workbench.evals.kinds`); ``out`` is not needed.

    With ``options.chat`` prompts are chat-rendered (:func:`with_chat`; checked before any data is
    read) and the manifest gets ``chat_template``: its name, source and sha256.
    """
    with_chat(spec, model, options)  # a model without a template fails before any data is read
    examples, data, policy = load_examples(spec, options)
    if options.limit is not None and options.limit < len(examples):
        examples = examples.sample(n=options.limit, random_state=options.seed).sort_index()
    examples = examples.reset_index(drop=True)
    chat_spec = with_chat(spec, model, options)
    samples = (options.score_examples or score)(model, chat_spec, examples, progress=bool(options.progress))
    metrics = metrics_table(spec, samples, seed=options.seed, n_boot=params["n_bootstrap"])
    extra = {}
    if options.chat:
        chat = chat_spec.prompt[CHAT_KEY]
        extra["chat_template"] = {"name": chat["name"], "source": chat["source"],
                                  "sha256": hashlib.sha256(chat["template"].encode("utf-8")).hexdigest()}
    return KindRun(metrics, samples, data, policy.skipped, extra)
