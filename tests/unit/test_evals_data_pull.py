"""``workbench data pull`` against a local HTTP server on loopback (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.evals import data_pull
from workbench.evals.data_pull import REGISTRY, DataPullError, file_url, pull

SHARED = Path(__file__).parents[3] / "shared" / "data"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1 (an ephemeral port); yields (root folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def registry(monkeypatch):
    """A two-dataset registry over small files made here (the real one pins the published files)."""
    files = {"alpha/a.csv": b"x,y\n1,2\n", "alpha/sub/b.jsonl": b'{"k": 1}\n' * 50, "beta/c.txt": b"hello\n"}
    reg = {
        "alpha": {"repo": "org/alpha", "commit": "c0ffee" * 6 + "abcd",
                  "files": [("alpha/a.csv", "data/a.csv", hashlib.sha256(files["alpha/a.csv"]).hexdigest(), 8),
                            ("alpha/sub/b.jsonl", "b.jsonl", hashlib.sha256(files["alpha/sub/b.jsonl"]).hexdigest(), 450)]},
        "beta": {"repo": "org/beta", "commit": "1" * 40,
                 "files": [("beta/c.txt", "c.txt", hashlib.sha256(files["beta/c.txt"]).hexdigest(), 6)]},
    }
    monkeypatch.setattr(data_pull, "REGISTRY", reg)
    return reg, files


def publish(www: Path, reg: dict, files: dict, corrupt: str | None = None):
    for entry in reg.values():
        for path, repo_path, _, _ in entry["files"]:
            target = www / entry["repo"] / entry["commit"] / repo_path
            target.parent.mkdir(parents=True, exist_ok=True)
            data = files[path]
            target.write_bytes(data[:-1] + b"!" if path == corrupt else data)


def test_pull_downloads_checks_and_skips(server, registry, tmp_path):
    www, base = server
    reg, files = registry
    publish(www, reg, files)
    dest = tmp_path / "data"
    report = pull(dest, base_url=base, progress=False)
    assert report["status"].tolist() == ["downloaded"] * 3
    for path, data in files.items():
        assert (dest / path).read_bytes() == data
    assert report["url"][0] == f"{base}/org/alpha/{reg['alpha']['commit']}/data/a.csv"
    again = pull(dest, base_url=base, progress=False)
    assert again["status"].tolist() == ["present"] * 3
    (dest / "beta/c.txt").write_bytes(b"edited\n")  # a damaged local copy is fetched again
    fixed = pull(dest, only=["beta"], base_url=base, progress=False)
    assert fixed["status"].tolist() == ["replaced"] and (dest / "beta/c.txt").read_bytes() == files["beta/c.txt"]
    assert not [p for p in dest.rglob(".*") if p.is_file()]  # no temporary file left anywhere


def test_corrupted_download_leaves_nothing_behind(server, registry, tmp_path):
    www, base = server
    reg, files = registry
    publish(www, reg, files, corrupt="alpha/sub/b.jsonl")
    dest = tmp_path / "data"
    with pytest.raises(DataPullError, match=r"b.jsonl: sha256 mismatch for b.jsonl \(expected [0-9a-f]{64}, got"):
        pull(dest, base_url=base, progress=False)
    assert (dest / "alpha/a.csv").read_bytes() == files["alpha/a.csv"]  # verified before the failure: kept
    assert not (dest / "alpha/sub/b.jsonl").exists()
    assert [p.name for p in (dest / "alpha/sub").iterdir()] == []  # no temp file either
    with pytest.raises(DataPullError, match="download failed"):  # 404: a file missing upstream
        pull(dest, only=["beta"], base_url=base + "/nothing-here", progress=False)
    assert not (dest / "beta").exists() or not any((dest / "beta").iterdir())
    with pytest.raises(ValueError, match="unknown dataset"):
        pull(dest, only=["gamma"], base_url=base)


def test_cli_data_pull(server, registry, tmp_path, capsys):
    www, base = server
    reg, files = registry
    publish(www, reg, files)
    dest = tmp_path / "data"
    assert main(["data", "pull", "beta", "--dest", str(dest), "--base-url", base]) == 0
    assert (dest / "beta/c.txt").is_file() and not (dest / "alpha").exists()
    assert main(["data", "pull", "--only", "alpha", "--dest", str(dest), "--base-url", base]) == 0
    assert (dest / "alpha/a.csv").is_file()
    publish(www, reg, files, corrupt="beta/c.txt")
    (dest / "beta/c.txt").unlink()
    assert main(["data", "pull", "--only", "beta", "--dest", str(dest), "--base-url", base]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out


def test_registry_pins_the_published_files():
    """Every registered dataset is in the shared data copy, file for file, with its sha256 and size.

    The shared copy also holds datasets the registry does not fetch yet (the misuse and refusal
    sets, the corpus, the instructions): those are read from the data directory only.
    """
    manifest_path = Path(os.environ.get("WORKBENCH_DATA") or SHARED) / "MANIFEST.json"
    if not manifest_path.is_file():
        pytest.skip("shared data MANIFEST.json not available")
    manifest = json.loads(manifest_path.read_text())
    assert set(REGISTRY) <= set(manifest)
    assert {"crows_pairs", "bbq", "winogender", "winobias", "truthfulqa", "toxigen", "decodingtrust"} <= set(REGISTRY)
    for name in REGISTRY:
        entry = manifest[name]
        assert REGISTRY[name]["commit"] == entry["commit"]
        assert REGISTRY[name]["repo"].split("/")[0] in entry["source_repo"]
        pinned = {path: (sha, size) for path, _, sha, size in REGISTRY[name]["files"]}
        assert pinned == {f["path"]: (f["sha256"], f["bytes"]) for f in entry["files"]}
    url = file_url("toxigen", "prompts/hate_asian_1k.txt")
    assert url == ("https://raw.githubusercontent.com/microsoft/TOXIGEN/"
                   f"{manifest['toxigen']['commit']}/prompts/hate_asian_1k.txt")
