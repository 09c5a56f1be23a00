"""``run_eval`` (one suite) and ``run_suite`` (a group such as ``safety`` or ``quick``).

Both take the same options (one :class:`~workbench.evals.options.EvalOptions`) and run each
suite the same way (:func:`_evaluate`): the suite's kind is looked up in
:data:`workbench.evals.kinds.KINDS`, its runner produces the tables, and the manifest is
assembled here, with the kind's own section.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any, Callable

from workbench.common.errors import MissingDataError
from workbench.common.versions import versions
from workbench.evals.kinds import MissingPluginError, kind_of
from workbench.evals.options import EvalOptions
from workbench.evals.result import EvalResult, SuiteResult, is_complete
from workbench.evals.suites import GroupEntry, SuiteSpec, list_groups, load_group, load_suite


def run_eval(
    model: Any,
    name: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    errors: str = "raise",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    score_examples: Any = None,
    chat: bool = False,
    system_prompt: str | None = None,
    **params: Any,
) -> EvalResult:
    """Run one eval suite on a model and return its metrics, per-example samples and manifest.

    Args:
        model: a :class:`~workbench.models.hooked.HookedLlama`. Hooks, steering and ablation
            contexts open on it apply (every forward goes through the bridge) and are recorded
            in the manifest.
        name: a suite name (``list_suites()``) or a suite YAML file.
        data_dir: benchmark data folder; default ``$WORKBENCH_DATA``, else the per-user folder.
        limit: score a seeded random subset of this many examples (kept in file order).
        seed: seeds the subset, the bootstrap CIs and any sampling.
        errors: ``"raise"`` on a malformed data row, or ``"skip"`` it (counted in the manifest).
        out: if given, save the result there (see :meth:`EvalResult.save`).
        progress: show a progress bar.
        score_examples: ``(model, spec, examples, progress=...) -> samples`` replacing the
            in-process scoring of log-likelihood suites (``workbench.distributed`` passes one that
            scores chunks of examples on Ray workers). Default: score here.
        chat: render prompts with the model's chat template (``model.format_chat``); a model
            without one raises ``NoChatTemplateError``.
        system_prompt: with ``chat``, a system message put before each prompt.
        **params: suite parameters (``mode="quick"`` and ``scorer=`` for ``toxicity``;
            ``judge=``, ``max_new_tokens=``, ``batch_size=`` for the refusal suites).

    Raises:
        MissingPluginError: the suite's kind needs a module that is not installed.

    >>> from workbench.evals import run_eval
    >>> res = run_eval(model, "crows_pairs", limit=200, seed=0)              # doctest: +SKIP
    >>> res.metrics.query("category == 'all'")                              # doctest: +SKIP
    >>> res.samples[["example_id", "loglik", "prediction", "category"]]     # doctest: +SKIP
    >>> run_eval(model, "harmful_requests", limit=20, chat=True, judge="keyword:xstest_strmatch")  # doctest: +SKIP
    """
    options = EvalOptions(data_dir=data_dir, limit=limit, seed=seed, errors=errors, progress=progress,
                          score_examples=score_examples, chat=chat, system_prompt=system_prompt)
    return _evaluate(model, load_suite(name), options, params, None if out is None else Path(out))


def run_suite(
    model: Any,
    name: str = "quick",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    errors: str = "raise",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    on_result: Callable[[str, EvalResult, bool], Any] | None = None,
    score_examples: Any = None,
    suite_params: dict[str, dict[str, Any]] | None = None,
    chat: bool = False,
    system_prompt: str | None = None,
) -> SuiteResult:
    """Run a group of suites (``"safety"``, ``"quick"``) or a single suite as a group of one.

    With ``out``, each suite is saved as it finishes (``out/<suite>/``) and ``out/suite.json``
    lists them (with suites an earlier command finished in the same folder); rerunning with the
    same ``out`` and parameters reuses finished suites instead of running them again. Optional
    suites whose data is missing, and suites whose kind's plug-in is missing, are skipped and
    listed in ``SuiteResult.skipped``.

    Args:
        limit: overrides each suite's limit from the group file (``None`` keeps them).
        on_result: called as ``on_result(suite_name, EvalResult, reused: bool)`` per suite.
        score_examples: passed to :func:`run_eval` for every log-likelihood suite.
        suite_params: per-suite parameters over the group file's, e.g.
            ``{"toxicity": {"mode": "quick", "scorer": "detoxify:/models/detoxify"}}``.
        data_dir, seed, errors, out, progress, chat, system_prompt: as in :func:`run_eval`.

    >>> suite = run_suite(model, "quick", out="runs/quick")        # doctest: +SKIP
    >>> suite.metrics.query("category == 'all'")                   # doctest: +SKIP
    >>> misuse = run_suite(model, "misuse", chat=True, out="runs/misuse")  # doctest: +SKIP
    """
    options = EvalOptions(data_dir=data_dir, limit=limit, seed=seed, errors=errors, progress=progress,
                          score_examples=score_examples, chat=chat, system_prompt=system_prompt)
    entries = load_group(name) if name in list_groups() else [load_group_entry(name)]
    # A suite given as a YAML path is saved, reported and parameterised under its own name.
    specs = [load_suite(e.suite) for e in entries]
    names = [spec.name for spec in specs]
    for suite_name in suite_params or {}:
        if suite_name not in names:
            raise ValueError(f"suite_params names {suite_name!r}, which is not in {name!r} ({', '.join(names)})")
    result = SuiteResult(group=name, params=options.group_params())
    folder = None if out is None else Path(out)
    if folder is not None:
        _keep_earlier_suites(result, folder, set(names))
        result.save(folder)  # suite.json first: a folder being filled says what it is
    for entry, spec in zip(entries, specs, strict=True):
        key = spec.name
        params = {**entry.params, **(suite_params or {}).get(key, {})}
        suite_options = options if limit is not None else dataclasses.replace(options, limit=entry.limit)
        sub = None if folder is None else folder / key
        reused = _reusable(sub, model, spec, suite_options, params)
        if reused is not None:
            res = reused
        else:
            try:
                res = _evaluate(model, spec, suite_options, params, sub)
            except (MissingPluginError, MissingDataError) as err:
                # Without its plug-in a suite cannot run here at all; without its data, only
                # an optional suite is passed over.
                if isinstance(err, MissingDataError) and not entry.optional:
                    raise
                result.skipped[key] = err.short if isinstance(err, MissingDataError) else str(err)
                if folder is not None:
                    result.save(folder)
                continue
        result.results[key] = res
        if folder is not None:
            result.save(folder)
        if on_result is not None:
            on_result(key, res, reused is not None)
    if folder is not None:
        result.save(folder)
    return result


def load_group_entry(name: str) -> GroupEntry:
    """A single suite (a name or a YAML path) as a group entry of its own."""
    load_suite(name)  # a clear error for an unknown name
    return GroupEntry(suite=name)


def _evaluate(model: Any, spec: SuiteSpec, options: EvalOptions, params: dict[str, Any],
              out: Path | None) -> EvalResult:
    """Run one suite through its kind's runner, assemble the manifest, save into ``out`` if given."""
    kind = kind_of(spec.kind)
    runner = kind.load_runner()  # a missing plug-in fails here, before any model time
    started, t0 = _now(), time.perf_counter()
    interventions = _interventions(model)
    run_params = options.params(spec.params, params)
    run = runner(model, spec, options, run_params, out)
    section = kind.manifest(spec, run)
    skipped = run.skipped
    manifest = {
        "suite": {"name": spec.name, "version": spec.version, "file": str(spec.path), "sha256": spec.sha256,
                  "kind": spec.kind, "reference": spec.reference},
        "model": _model_info(model),
        "data": run.data,
        "params": run_params,
        "skipped": skipped,
        "n_skipped": sum(v.get("rows", 0) for v in skipped.values()) if isinstance(skipped, dict) else 0,
        "n_examples": int(len(run.samples)),
        **section,
        "interventions": interventions,
        "versions": versions(),
        "started_at": started,
        "finished_at": _now(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        **{k: v for k, v in run.extra.items() if k not in section},
    }
    result = EvalResult(run.metrics.reset_index(drop=True), run.samples.reset_index(drop=True), manifest)
    if out is not None:
        result.save(out)
    return result


def _keep_earlier_suites(result: SuiteResult, folder: Path, current: set[str]) -> None:
    """Suites that another command finished in ``folder`` stay listed in its ``suite.json``."""
    if not (folder / "suite.json").is_file():
        return
    try:
        prior = SuiteResult.load(folder)
    except (OSError, ValueError, KeyError):  # a damaged earlier index: start it afresh
        return
    for suite_name, res in prior.results.items():
        if suite_name not in current:
            result.results[suite_name] = res


def _reusable(folder: Path | None, model: Any, spec: SuiteSpec, options: EvalOptions,
              params: dict[str, Any]) -> EvalResult | None:
    """A finished result in ``folder`` made with the same model, suite file and parameters."""
    if folder is None or not is_complete(folder):
        return None
    try:
        res = EvalResult.load(folder)
    except (OSError, ValueError):
        return None
    m = res.manifest
    same = (m.get("params") == options.params(spec.params, params)
            and m.get("suite", {}).get("version") == spec.version
            and m.get("suite", {}).get("sha256") == spec.sha256
            and m.get("model", {}).get("fingerprint") == _model_info(model).get("fingerprint")
            and m.get("interventions") == _interventions(model))
    return res if same else None


def _model_info(model: Any) -> dict[str, Any]:
    source = getattr(model, "source", None)
    info: dict[str, Any] = {"name": getattr(source, "name", type(model).__name__),
                            "format": getattr(source, "format", None), "path": getattr(source, "path", None),
                            "fingerprint": getattr(source, "fingerprint", None)}
    for attr in ("dtype", "device"):
        try:
            info[attr] = str(getattr(model, attr)).removeprefix("torch.")
        except Exception:  # a model without parameters or placement: leave it out
            pass
    return info


def _interventions(model: Any) -> list:
    fn = getattr(model, "active_interventions", None)
    return list(fn()) if callable(fn) else []


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
