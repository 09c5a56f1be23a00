"""The resumable JSONL progress log (generic over generation suites)."""

import json

import pytest

from workbench.common.errors import WorkbenchError
from workbench.evals.progress import ProgressLog

HEADER = {"suite": "toxicity", "seed": 0}


def test_a_new_log_starts_with_its_header_and_appends(tmp_path):
    path = tmp_path / "run" / "p.jsonl"
    log = ProgressLog(path, HEADER)
    assert path.read_text() == json.dumps({"header": HEADER}) + "\n" and log.done == {}
    log.add({"example_id": "a", "value": 1})
    log.add({"example_id": "b", "value": 2})
    again = ProgressLog(path, HEADER)
    assert again.done == {"a": {"example_id": "a", "value": 1}, "b": {"example_id": "b", "value": 2}}
    assert [p.name for p in path.parent.iterdir()] == ["p.jsonl"]  # no temporary file left


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "p.jsonl"
    ProgressLog(path, HEADER).add({"example_id": "a"})
    with open(path, "a") as fh:
        fh.write('{"example_id": "b", "va')  # a kill in the middle of a write
    log = ProgressLog(path, HEADER)
    assert list(log.done) == ["a"] and path.read_text().endswith('{"example_id": "a"}\n')
    log.add({"example_id": "b"})
    assert list(ProgressLog(path, HEADER).done) == ["a", "b"]
    path.write_text('{"head')  # not even the header finished: start again
    assert ProgressLog(path, HEADER).done == {} and json.loads(path.read_text()) == {"header": HEADER}


def test_other_settings_and_damage_in_the_middle_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    log = ProgressLog(path, HEADER)
    log.add({"example_id": "a"})
    with pytest.raises(WorkbenchError, match="other settings"):
        ProgressLog(path, {**HEADER, "seed": 1})
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:5], lines[1]]) + "\n")
    with pytest.raises(WorkbenchError, match="line 2: unreadable"):
        ProgressLog(path, HEADER)
    keyed = ProgressLog(tmp_path / "k.jsonl", HEADER, key="id")
    keyed.add({"id": 7})
    assert list(ProgressLog(tmp_path / "k.jsonl", HEADER, key="id").done) == [7]
