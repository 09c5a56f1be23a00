"""A resumable progress log: one JSON line per finished example, appended and fsynced.

Generic over suites that take long per example (sampled generations): a run appends each
finished example as it goes; a rerun with the same settings reads the finished ones back and
does only the rest, so an interrupted run (an exception, a kill -9) loses at most the example
it was on. Line 1 is a header recording the settings; a rerun with other settings is refused
rather than mixing two runs' examples.

>>> log = ProgressLog(Path("runs/tox/toxicity.progress.jsonl"), {"seed": 0})  # doctest: +SKIP
>>> log.add({"example_id": "rtp_toxic:0001", "continuations": ["..."]})       # doctest: +SKIP
>>> "rtp_toxic:0001" in ProgressLog(log.path, {"seed": 0}).done              # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_write


class ProgressLog:
    """Append-only JSONL of finished examples; line 1 is a header the rerun must match.

    A last line without its newline (a process killed mid-write) is cut off on open; any other
    unreadable line is an error naming the file and line.

    Args:
        path: the log file (created, with its header, when it does not exist).
        header: the settings of the run (JSON-serialisable); a rerun must pass the same.
        key: the record field naming an example.

    Attributes:
        done: key -> record, for every finished example (read back, then added).
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], key: str = "example_id"):
        self.path = Path(path)
        self.header = header
        self.key = key
        self.done: dict[str, dict] = {}
        if self.path.exists():
            self._load()
        else:
            self._start()

    def _start(self) -> None:
        # A new log appears whole, header included, or not at all.
        atomic_write(self.path, self._line({"header": self.header}))

    def _load(self) -> None:
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # bytes after the last newline are an interrupted write
        lines = data[:keep].decode("utf-8").splitlines()
        if not lines:
            self._start()
            return
        if keep < len(data):
            atomic_write(self.path, data[:keep])  # the finished lines, without the torn one
        for line_no, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise WorkbenchError(f"{self.path}, line {line_no}: unreadable ({err.msg}); delete the file "
                                     "to start the run again") from None
            if line_no == 1:
                if record.get("header") != self.header:
                    raise WorkbenchError(
                        f"{self.path} was written by a run with other settings ({record.get('header')}); "
                        f"this run has {self.header}. Use another output folder or delete the file."
                    )
                continue
            self.done[record[self.key]] = record

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps(record) + "\n"

    def add(self, record: dict) -> None:
        """Append one finished example (flushed and fsynced before this returns)."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(self._line(record))
            fh.flush()
            os.fsync(fh.fileno())
        self.done[record[self.key]] = record
