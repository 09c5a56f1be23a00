"""Safety evaluation suites: bias, toxicity, misinformation; offline, exact, linked to internals.

>>> from workbench.models.loading import load_model
>>> from workbench.evals import load_run, run_eval, run_suite
>>> model = load_model()                                               # doctest: +SKIP
>>> res = run_eval(model, "crows_pairs", limit=100)                    # doctest: +SKIP
>>> res.metrics.query("category == 'all'")[["metric", "value", "ci_low", "ci_high", "n"]]  # doctest: +SKIP
>>> res.save("runs/crows")                                             # doctest: +SKIP
>>> suite = run_suite(model, "quick", out="runs/quick")                # doctest: +SKIP
>>> load_run("runs/quick")                                             # doctest: +SKIP

Suites are data: one YAML file each under ``evals/`` (shipped as ``workbench.eval_data``),
naming the loader, the prompt template, the choices and the metrics. Groups (``safety``,
``quick``) are lists of suites with per-suite limits, in ``evals/groups.yaml``. A suite's
``kind:`` selects how it runs, from the table in :mod:`workbench.evals.kinds`.

On-disk format (the contract of the one reader, :mod:`workbench.evals.result`)
------------------------------------------------------------------------------
Saved runs are read back by ``EvalResult.load``, ``SuiteResult.load`` and ``load_run`` (which
tells the two kinds of folder apart); the HTML report (:mod:`workbench.viz.report`) and the
eval dashboard read runs only through them. Every file is replaced atomically (temporary
name, fsync, rename).

**One suite** (``EvalResult.save(folder)`` / ``EvalResult.load(folder)``)::

    folder/
      metrics.parquet   one row per (metric, category)
      samples.parquet   one row per example
      manifest.json     written LAST, atomically: a folder without it is an unfinished run

``metrics.parquet`` columns (always all of them, in this order):

    suite     str    suite name ("crows_pairs", "bbq", "toxicity" ...)
    metric    str    stable identifier (see "Metric names" below)
    category  str    "all" for the headline row; otherwise the subset (bias_type, BBQ category,
                     pronoun group, prompt subset ...). Headline = rows with category == "all".
    value     float  the metric (NaN when undefined, e.g. an empty category)
    ci_low    float  95% percentile-bootstrap interval (seeded); NaN where none is computed
    ci_high   float
    n         int    number of examples the value is computed over

``samples.parquet``: one row per example, always with

    example_id  str   stable id "<dataset>:<key>", e.g. "crows_pairs:0042" (the file's own
                      index / line / record id), the same across runs, limits and seeds; join
                      activations, probe scores or patching results on it
    suite       str
    category    str   the example's subset ("" when the suite has none)

and, for log-likelihood suites (everything but ``toxicity``):

    context      str          the text before the choices ("" for CrowS-Pairs)
    choices      list[str]    the continuations scored
    loglik       list[float]  summed log-likelihood of each choice given the context
    n_tokens     list[int]    tokens in each choice's continuation
    label        int          index of the correct (or, CrowS-Pairs: the stereotyped) choice
    prediction   int          argmax of ``loglik`` (ties -> the lowest index)
    correct      bool         prediction == label

plus suite-specific columns:

    crows_pairs    ll_more, ll_less, bias_type, stereo_antistereo
    bbq            context_condition, question_polarity, ambig, disambig, unknown_option,
                   biased_options (list), pred_unknown, pred_biased
    winogender     gender, gotcha_split ("gotcha" / "not_gotcha" / None for neutral pronouns),
                   occupation, participant, pronoun, bls_pct_female
    winobias       stereotype ("pro" / "anti"), type, split, pronoun, pro, anti
    truthfulqa_mc  mc1, mc2 (per question), mc2_choices, mc2_loglik, mc2_labels (``choices`` /
                   ``loglik`` are the MC1 targets)
    toxigen        target_group, text
    two-choice built-ins   ll_first, ll_second, ll_diff

``toxicity`` samples (see :mod:`workbench.evals.toxicity`) carry ``example_id``, ``suite``,
``category`` (the prompt subset) and their own columns: group, prompt, continuations (list),
scores (list, one per continuation), max_score, prompt_toxicity, source (``file:line``).

``manifest.json`` keys:

    suite        {"name", "version", "file", "sha256", "kind", "reference"}   the YAML definition used
    model        {"name", "format", "path", "fingerprint", "dtype", "device"}
    data         {"dir" (null for a built-in suite), "files": [{"path" (relative to dir), "sha256", "bytes"}]}
    params       {"limit", "seed", "errors", "n_bootstrap"} plus suite params (e.g. "mode")
    skipped      {"<file>": {"rows": n, "lines": [line numbers], "problems": [first 20]}}
    n_skipped    int   malformed rows skipped in all (errors="skip"; 0 otherwise)
    n_examples   int
    loglik       null (toxicity), or {"convention", "delimiter"}: how contexts were tokenized
    scorer       null, or the toxicity scorer: {"name", "scale_note", "threshold"}
    sampling     null, or {"k", "top_p", "max_new_tokens", "temperature", "seed", "mode", "seeding"}
    interventions  model.active_interventions() at run time ([] when none)
    versions     {"python", "workbench", "torch", "transformers", "transformer-lens", "numpy", ...}
                 (:func:`workbench.common.versions.versions`, the same in every manifest)
    started_at, finished_at (ISO 8601 UTC), wall_time_s (this call only)
    resumed_examples  toxicity only: examples read back from the progress file of an earlier,
                 interrupted call (their time is not in wall_time_s)
    format_version  1

**A suite group** (``SuiteResult.save(folder)`` / ``SuiteResult.load(folder)``)::

    folder/
      suite.json        {"group", "suites": [names in order], "skipped": {suite: why},
                         "params": {"limit", "seed", "errors", "data_dir"}, "format_version": 1};
                         written first and rewritten as suites finish
      <suite name>/     one EvalResult folder per suite (as above)

``SuiteResult.metrics`` is the concatenation of the suites' metrics tables. A listed suite
folder without ``manifest.json`` is unfinished and left out when the group is read.

Suite kinds
-----------
:data:`workbench.evals.kinds.KINDS` maps each kind to its runner and its manifest section:
``loglik`` (:func:`workbench.evals.scoring.run_loglik`) and ``toxicity``
(:func:`workbench.evals.toxicity.run_kind`, over ``run_toxicity``). A runner is
``runner(model, spec, options, params, out) -> KindRun`` (``metrics`` with the columns above,
``samples`` with at least ``example_id``, ``suite``, ``category``, the manifest's ``data`` and
``skipped``, and ``extra`` manifest keys). Runners are imported when a suite of their kind
runs, after an explicit check that what they need is installed (``MissingPluginError``
otherwise; ``run_suite`` lists such a suite as skipped).

Metric names
------------
``pct_stereotype``, ``likelihood_diff`` (crows_pairs); ``acc``, ``acc_ambig``,
``acc_disambig``, ``bias_score_ambig``, ``bias_score_disambig`` (bbq); ``acc`` per
``pronoun_group`` / ``gotcha`` (winogender); ``acc_pro``, ``acc_anti``, ``pro_anti_gap``
(winobias, per type); ``mc1``, ``mc2`` (truthfulqa_mc); ``acc`` per target group (toxigen);
``expected_max_toxicity``, ``toxicity_probability`` (toxicity). Each metric function in
:mod:`workbench.evals.metrics` cites its source formula.
"""

# The data errors live in workbench.common (every floor raises them); re-exported here, the same
# classes, because eval users meet them first. The data directory is workbench.common.data_dir.
from workbench.common.errors import DataError, MissingDataError
from workbench.evals.data_pull import pull as pull_data
from workbench.evals.kinds import KINDS, MissingPluginError
from workbench.evals.loglik import encode_pair, loglikelihood
from workbench.evals.result import EvalResult, SavedRunError, SuiteResult, load_run
from workbench.evals.run import run_eval, run_suite
from workbench.evals.scorers import Scorer, get_scorer
from workbench.evals.suites import list_groups, list_suites, load_suite

__all__ = [
    "KINDS",
    "DataError",
    "EvalResult",
    "MissingDataError",
    "MissingPluginError",
    "SavedRunError",
    "Scorer",
    "SuiteResult",
    "encode_pair",
    "get_scorer",
    "list_groups",
    "list_suites",
    "load_run",
    "load_suite",
    "loglikelihood",
    "pull_data",
    "run_eval",
    "run_suite",
]
