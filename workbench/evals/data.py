"""Finding a dataset's files in the data directory, describing them, and reporting bad rows.

The data directory itself is resolved by :func:`workbench.common.data_dir.resolve_data_dir`
(the ``data_dir`` argument, else ``$WORKBENCH_DATA``, else the per-user folder where
``workbench data pull`` puts the published files). Datasets are read from their authors'
published files, unedited; nothing is copied into the project.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from workbench.common.data_dir import DATA_ENV, user_data_dir
from workbench.common.errors import DataError, MissingDataError
from workbench.common.files import sha256_file

# Where each dataset's published files come from, for the "missing data" message.
SOURCES = {
    "crows_pairs": "https://github.com/nyu-mll/crows-pairs (data/crows_pairs_anonymized.csv)",
    "bbq": "https://github.com/nyu-mll/BBQ (data/*.jsonl)",
    "winogender": "https://github.com/rudinger/winogender-schemas (data/)",
    "winobias": "https://github.com/uclanlp/corefBias (WinoBias/wino/data/)",
    "truthfulqa": "https://github.com/sylinrl/TruthfulQA (data/v0/mc_task.json)",
    "toxigen": "https://github.com/microsoft/TOXIGEN (prompts/)",
    "decodingtrust": "https://github.com/AI-secure/DecodingTrust (data/toxicity/user_prompts/)",
    "harmbench": "https://github.com/centerforaisafety/HarmBench (data/behavior_datasets/harmbench_behaviors_text_*.csv)",
    "jailbreakbench": "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors (harmful and benign behaviors CSVs)",
    "advbench": "https://github.com/llm-attacks/llm-attacks (data/advbench/harmful_behaviors.csv)",
    "directharm4": "https://huggingface.co/datasets/vfleaking/DirectHarm4 (as directHarm4.csv: Goal, Category)",
    "refusal_direction": "https://github.com/andyrdt/refusal_direction (dataset/)",
    "xstest": "https://github.com/paul-rottger/exaggerated-safety (xstest_v2_prompts.csv as xstest_prompts.csv)",
    "cyberseceval_frr": "https://github.com/meta-llama/PurpleLlama (CybersecurityBenchmarks/datasets/mitre_frr/mitre_frr.json)",
}


# How a suite skipped for want of its data is listed (SuiteResult.skipped); see data_hint.
NO_DATA = "no data: "


def find_files(root: Path, dataset: str, patterns: list[str]) -> list[Path]:
    """Every file under ``root`` matching ``patterns`` (globs relative to ``root``), sorted.

    Each pattern must match at least one file; otherwise :class:`MissingDataError` names the
    expected files, the folder searched and where to get them.
    """
    found: list[Path] = []
    missing = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(str(root / pattern)) if Path(p).is_file())
        if not hits:
            missing.append(pattern)
        found.extend(h for h in hits if h not in found)
    if missing:
        raise MissingDataError(
            f"dataset {dataset!r}: expected {', '.join(missing)} under {root} (not found). "
            f"The data directory is the data_dir argument, else ${DATA_ENV}, else "
            f"{user_data_dir()}. Get the published files with `workbench data pull {dataset}` "
            f"(online), or from {SOURCES.get(dataset, 'the dataset authors')}.",
            short=f"{NO_DATA}{missing[0]}{f' (+{len(missing) - 1} more)' if len(missing) > 1 else ''} "
                  f"not found under {root}",
        )
    return found


def data_hint(skipped: dict[str, str]) -> str | None:
    """One line on how to get the data, when some of ``skipped``'s suites lacked theirs.

    ``skipped`` is :attr:`SuiteResult.skipped` (suite -> why); ``None`` when no suite was
    skipped for want of data.

    >>> data_hint({"bbq": "no data: bbq/*.jsonl not found under /data"})[:40]
    'Benchmark data: `workbench data pull` fe'
    >>> data_hint({"toxicity": "the toxicity plug-in is not installed"}) is None
    True
    """
    if not any(why.startswith(NO_DATA) for why in skipped.values()):
        return None
    return (f"Benchmark data: `workbench data pull` fetches it (online), or set ${DATA_ENV} "
            f"(--data-dir) to a folder that has it.")


def describe_files(root: Path, files: list[Path]) -> list[dict]:
    """``[{"path", "sha256", "bytes"}]`` for the manifest; paths relative to ``root``."""
    out = []
    for f in files:
        try:
            rel = str(f.relative_to(root))
        except ValueError:
            rel = str(f)
        out.append({"path": rel, "sha256": sha256_file(f), "bytes": f.stat().st_size})
    return out


@dataclass
class RowPolicy:
    """What to do with a malformed row: ``"raise"`` (default) or ``"skip"`` and count it.

    Skipped rows are recorded per file (count and line numbers) and end up in the manifest,
    so nothing is dropped silently.
    """

    errors: str = "raise"
    skipped: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        if self.errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {self.errors!r}")

    def bad(self, path: Path, line: int, problem: str) -> None:
        """Report a bad row: raise :class:`DataError`, or record it when skipping."""
        if self.errors == "raise":
            raise DataError(f"{path}:{line}: {problem} (pass errors='skip' to skip bad rows and count them)")
        entry = self.skipped.setdefault(str(path), {"rows": 0, "lines": [], "problems": []})
        entry["rows"] += 1
        entry["lines"].append(line)
        if len(entry["problems"]) < 20:  # enough to diagnose; the count is exact
            entry["problems"].append(f"line {line}: {problem}")

    @property
    def n_skipped(self) -> int:
        return sum(e["rows"] for e in self.skipped.values())


def read_text(path: Path, policy: RowPolicy) -> str:
    """A file's text: UTF-8 with or without a BOM; undecodable bytes name their line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from None
