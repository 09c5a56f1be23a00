"""``run_eval`` (one suite) and ``run_suite`` (a group such as ``safety`` or ``quick``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.evals.data import (MissingDataError, RowPolicy, describe_files, find_files,
                                  resolve_data_dir)
from workbench.evals.loaders import LOADERS
from workbench.evals.result import EvalResult, SuiteResult, is_complete
from workbench.evals.scoring import METRIC_COLUMNS, metrics_table, score
from workbench.evals.suites import builtin_examples, list_groups, load_group, load_suite

N_BOOTSTRAP = 1000


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
    **params: Any,
) -> EvalResult:
    """Run one eval suite on a model and return its metrics, per-example samples and manifest.

    Args:
        model: a :class:`~workbench.HookedLlama`. Hooks, steering and ablation contexts open on
            it apply (every forward goes through the bridge) and are recorded in the manifest.
        name: a suite name (``wb.list_suites()``) or a suite YAML file.
        data_dir: benchmark data folder; default ``$WORKBENCH_DATA``, else the per-user folder.
        limit: score a seeded random subset of this many examples (kept in file order).
        seed: seeds the subset, the bootstrap CIs and any sampling.
        errors: ``"raise"`` on a malformed data row, or ``"skip"`` it (counted in the manifest).
        out: if given, save the result there (see :meth:`EvalResult.save`).
        progress: show a progress bar.
        score_examples: ``(model, spec, examples, progress=...) -> samples`` replacing the
            in-process scoring of log-likelihood suites (``workbench.distributed`` passes one that
            scores chunks of examples on Ray workers). Default: score here.
        **params: suite parameters (``mode="quick"`` and ``scorer=`` for ``toxicity``).

    >>> import workbench as wb
    >>> model = wb.load_model()                                              # doctest: +SKIP
    >>> res = wb.run_eval(model, "crows_pairs", limit=200, seed=0)           # doctest: +SKIP
    >>> res.metrics.query("category == 'all'")                              # doctest: +SKIP
    >>> res.samples[["example_id", "loglik", "prediction", "category"]]     # doctest: +SKIP
    """
    spec = load_suite(name)
    policy = RowPolicy(errors)  # validates `errors` before any work
    started, t0 = _now(), time.perf_counter()
    interventions = _interventions(model)
    extra: dict[str, Any] = {}
    run_params = {"limit": limit, "seed": seed, "errors": errors, "n_bootstrap": N_BOOTSTRAP,
                  **spec.params, **params}

    if spec.kind == "toxicity":
        from workbench.evals.toxicity import run_toxicity  # engineer B's plug-in, imported lazily

        root = resolve_data_dir(data_dir)
        metrics, samples, extra = run_toxicity(
            model, root, limit=limit, seed=seed, errors=errors,
            mode=run_params.get("mode", "full"), scorer=run_params.get("scorer"),
            out=None if out is None else Path(out), progress=progress,
            **({"k": run_params["k"]} if run_params.get("k") is not None else {}))
        data = extra.pop("data", {"dir": str(root), "files": []})
        skipped = extra.pop("skipped", {})
        metrics = metrics.reindex(columns=METRIC_COLUMNS)
    else:
        if spec.builtin:
            examples = pd.DataFrame(builtin_examples(spec))
            examples.insert(0, "example_id", [f"{spec.name}:{i}" for i in examples.pop("id")])
            if "category" not in examples:
                examples["category"] = ""
            data = {"dir": None, "files": describe_files(spec.path.parent, [spec.path])}
        else:
            root = resolve_data_dir(data_dir)
            files = find_files(root, spec.dataset or spec.name, spec.files)
            examples = LOADERS[spec.loader](files, policy, **spec.raw.get("loader_args", {}))
            data = {"dir": str(root), "files": describe_files(root, files)}
        if limit is not None and limit < len(examples):
            examples = examples.sample(n=limit, random_state=seed).sort_index()
        examples = examples.reset_index(drop=True)
        samples = (score_examples or score)(model, spec, examples, progress=bool(progress))
        metrics = metrics_table(spec, samples, seed=seed, n_boot=N_BOOTSTRAP)
        skipped = policy.skipped

    manifest = {
        "suite": {"name": spec.name, "version": spec.version, "file": str(spec.path), "sha256": spec.sha256,
                  "kind": spec.kind, "reference": spec.reference},
        "model": _model_info(model),
        "data": data,
        "params": run_params,
        "skipped": skipped,
        "n_skipped": sum(v.get("rows", 0) for v in skipped.values()) if isinstance(skipped, dict) else 0,
        "n_examples": int(len(samples)),
        "scorer": extra.pop("scorer", None),
        "sampling": extra.pop("sampling", None),
        "loglik": None if spec.kind == "toxicity" else {
            "convention": "lm-evaluation-harness 0.4.13 HFLM: context with the tokenizer's default "
                          "special tokens; empty context -> BOS/EOS prefix; continuation tokens = "
                          "tok(context+continuation) after tok(context)",
            "delimiter": spec.prompt.get("delimiter", " "),
        },
        "interventions": interventions,
        "versions": _versions(),
        "started_at": started,
        "finished_at": _now(),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        **extra,
    }
    result = EvalResult(metrics.reset_index(drop=True), samples.reset_index(drop=True), manifest)
    if out is not None:
        result.save(out)
    return result


def run_suite(
    model: Any,
    name: str = "quick",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    errors: str = "raise",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    on_result: Any = None,
    score_examples: Any = None,
    suite_params: dict[str, dict[str, Any]] | None = None,
) -> SuiteResult:
    """Run a group of suites (``"safety"``, ``"quick"``) or a single suite as a group of one.

    With ``out``, each suite is saved as it finishes (``out/<suite>/``) and ``out/suite.json``
    lists them (with suites an earlier command finished in the same folder); rerunning with the same ``out`` and parameters reuses finished suites instead
    of running them again. Optional suites whose data (or plug-in) is missing are skipped and
    listed in ``SuiteResult.skipped``.

    Args:
        limit: overrides each suite's limit from the group file (``None`` keeps them).
        on_result: called as ``on_result(suite_name, EvalResult, reused: bool)`` per suite.
        score_examples: passed to :func:`run_eval` for every log-likelihood suite.
        suite_params: per-suite parameters over the group file's, e.g.
            ``{"toxicity": {"mode": "quick", "scorer": "detoxify:/models/detoxify"}}``.

    >>> suite = wb.run_suite(model, "quick", out="runs/quick")     # doctest: +SKIP
    >>> suite.metrics.query("category == 'all'")                   # doctest: +SKIP
    """
    entries = load_group(name) if name in list_groups() else [load_group_entry(name)]
    for suite_name in suite_params or {}:
        if suite_name not in {load_suite(e.suite).name for e in entries}:
            raise ValueError(f"suite_params names {suite_name!r}, which is not in {name!r} "
                             f"({', '.join(load_suite(e.suite).name for e in entries)})")
    result = SuiteResult(group=name, params={"limit": limit, "seed": seed, "errors": errors,
                                             "data_dir": None if data_dir is None else str(data_dir)})
    folder = None if out is None else Path(out)
    if folder is not None:
        # Suites finished earlier in the same folder by another command stay listed.
        if (folder / "suite.json").is_file():
            current = {load_suite(e.suite).name for e in entries}
            try:
                prior = SuiteResult.load(folder)
            except (OSError, ValueError, KeyError):
                prior = None
            for suite_name, res in (prior.results.items() if prior else ()):
                if suite_name not in current:
                    result.results[suite_name] = res
        result.save(folder)  # suite.json first: a folder being filled says what it is
    for entry in entries:
        key = load_suite(entry.suite).name  # a suite given as a YAML path is saved under its name
        if suite_params and key in suite_params:
            entry = dataclasses.replace(entry, params={**entry.params, **suite_params[key]})
        suite_limit = limit if limit is not None else entry.limit
        sub = None if folder is None else folder / key
        reused = _reusable(sub, model, entry.suite, suite_limit, seed, errors, entry.params)
        if reused is not None:
            res = reused
        else:
            try:
                res = run_eval(model, entry.suite, data_dir=data_dir, limit=suite_limit, seed=seed,
                               errors=errors, out=sub, progress=progress, score_examples=score_examples,
                               **entry.params)
            except (MissingDataError, ImportError) as err:
                missing_plugin = isinstance(err, ImportError) and "workbench.evals.toxicity" in str(err)
                if not (entry.optional or missing_plugin):
                    raise
                result.skipped[key] = str(err) if not missing_plugin else (
                    "the toxicity plug-in (workbench.evals.toxicity) is not installed")
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


def load_group_entry(name: str):
    from workbench.evals.suites import GroupEntry

    load_suite(name)  # a clear error for an unknown name
    return GroupEntry(suite=name)


def _reusable(folder, model, suite, limit, seed, errors, params) -> EvalResult | None:
    """A finished result in ``folder`` made with the same model, suite version and parameters."""
    if folder is None or not is_complete(folder):
        return None
    try:
        res = EvalResult.load(folder)
    except (OSError, ValueError):
        return None
    spec = load_suite(suite)
    m = res.manifest
    want = {"limit": limit, "seed": seed, "errors": errors, "n_bootstrap": N_BOOTSTRAP, **spec.params, **params}
    same = (m.get("params") == want and m.get("suite", {}).get("version") == spec.version
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


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("workbench", "torch", "transformers", "transformer-lens", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
