"""Instruction -> response rows for fine-tuning: Alpaca-style files, lists of dicts, and the
benign Alpaca sample of the shared data (Qi et al.'s safety-related rows removed).

Every row becomes ``{"prompt": str, "response": str}``; the prompt is the instruction with its
optional input below it, as one user message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import DataError, MissingDataError

ALPACA_5000 = Path("instruct") / "alpaca_5000" / "alpaca_5000.json"
QI_SAFETY_ROWS = Path("instruct") / "qi2023_safety_filter" / "alpaca_data_safety_only.json"


def instruction_rows(data: Any) -> list[dict[str, str]]:
    """Fine-tuning rows from ``data``: a path to a JSON array or a JSON Lines file, or an
    iterable of dicts with ``instruction`` (+ optional ``input``) and ``output`` (Alpaca),
    ``prompt`` and ``response``, or ``question`` and ``answer`` (GSM8K).

    Raises:
        DataError: a row without a prompt or a response (names the file and the row), a file
            that does not parse, or no rows at all.

    >>> instruction_rows([{"instruction": "Add.", "input": "2 + 2", "output": "4"}])
    [{'prompt': 'Add.\\n\\n2 + 2', 'response': '4'}]
    """
    where = "data"
    if isinstance(data, (str, os.PathLike)):
        where = str(data)
        data = _read_rows(Path(data))
    elif isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise DataError(f"data: expected a file path or a list of rows, got {type(data).__name__}")
    rows = [_row(raw, where, i) for i, raw in enumerate(data)]
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows


def benign_alpaca(data_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The shared data's 5,000-row Alpaca sample without the rows Qi et al. (2023) flagged as
    safety-related (``alpaca_data_safety_only.json``), in file order: Qi et al.'s "benign
    Alpaca" applied to this sample leaves 4,822 rows, less the two with an empty output: 4,820.

    Raises:
        MissingDataError: the files are not in the data directory (says where it looked).
    """
    root = resolve_data_dir(data_dir, needed_by="the benign Alpaca fine-tuning data")
    paths = [root / ALPACA_5000, root / QI_SAFETY_ROWS]
    for path in paths:
        if not path.is_file():
            raise MissingDataError(f"{path}: not found (the shared data's instruct/ folder; see its README)")
    unsafe = {(r["instruction"], r.get("input", ""), r["output"]) for r in _read_rows(paths[1])}
    kept = [r for r in _read_rows(paths[0])
            if (r["instruction"], r.get("input", ""), r["output"]) not in unsafe and str(r.get("output", "")).strip()]
    return instruction_rows(kept)


def rows_sha256(rows: list[dict[str, str]]) -> str:
    """A fingerprint of the rows (their order included): what a resumed run checks."""
    text = json.dumps(rows, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_rows(path: Path) -> list[Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid JSON ({e})") from None
    return rows


def _row(raw: Any, where: str, index: int) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}, row {index}: expected an object, got {type(raw).__name__}")
    if "instruction" in raw:
        prompt = str(raw["instruction"]).strip()
        if str(raw.get("input") or "").strip():
            prompt = f"{prompt}\n\n{str(raw['input']).strip()}"
        response = raw.get("output")
    elif "prompt" in raw:
        prompt, response = str(raw["prompt"]), raw.get("response")
    elif "question" in raw:
        prompt, response = str(raw["question"]), raw.get("answer")
    else:
        raise DataError(f"{where}, row {index}: needs instruction/output, prompt/response or question/answer "
                        f"(has {sorted(raw)})")
    if not prompt or response is None or not str(response).strip():
        raise DataError(f"{where}, row {index}: empty prompt or response")
    return {"prompt": prompt, "response": str(response)}
