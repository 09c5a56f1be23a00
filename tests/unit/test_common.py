"""The floor every layer stands on: atomic files, versions, the data directory."""

import errno
import hashlib
import json
import os

import pytest

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import MissingDataError, WorkbenchError
from workbench.common.files import atomic_path, atomic_write, atomic_write_json, sha256_file
from workbench.common.versions import versions


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write(target, b"old")
    assert target.read_bytes() == b"old"
    assert json.loads(atomic_write_json(target, {"y": [1, 2]}).read_text()) == {"y": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.html"
    atomic_write(target, "complete")

    def full_disk(f):
        f.write(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, full_disk)
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_atomic_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "b.bin").write_bytes(b"2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]
    with atomic_path(target, directory=True) as tmp:
        (tmp / "c.bin").write_bytes(b"3")
    assert sorted(p.name for p in target.iterdir()) == ["c.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_written_file_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_versions_names_the_packages_results_depend_on():
    from importlib import metadata

    found = versions()
    assert found["torch"] == metadata.version("torch") and found["numpy"] == metadata.version("numpy")
    assert {"python", "workbench", "transformers", "transformer-lens", "pandas"} <= set(found)


def test_data_dir_order_and_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    with pytest.raises(MissingDataError) as info:
        resolve_data_dir(needed_by="concept 'toxicity'")
    message = str(info.value)
    assert "concept 'toxicity'" in message and str(tmp_path / "env") in message and "$WORKBENCH_DATA" in message
    assert isinstance(info.value, WorkbenchError) and isinstance(info.value, FileNotFoundError)
    (tmp_path / "env").mkdir()
    assert resolve_data_dir(needed_by="x") == tmp_path / "env"
