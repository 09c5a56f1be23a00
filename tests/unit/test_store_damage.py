"""A damaged store says so: sizes checked on open, checksums by `workbench verify`, `--repair`."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import workbench as wb
from workbench.cli import main
from workbench.store import ActivationStore, StoreError, repair_store, verify_store

TEXTS = ["the cat sat on the mat", "the dog", "what is the capital of france ?", "red",
         "paris is the capital of france and rome is the capital of italy", "the house was blue",
         "a dog ran to a cat"]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
LEGACY = Path(__file__).parents[1] / "data" / "legacy-c80fc33" / "store"


def _cache(model, out):
    return wb.cache_activations(model, TEXTS, hooks=HOOKS, positions="all", path=out, batch_size=2,
                                shard_size=3, dtype="float16", progress=False)


def _printed(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def _files(folder: Path) -> dict:
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
           if p.is_file() and p.name != "manifest.json"}
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("created")
    out["manifest"] = manifest
    return out


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    _cache(tiny_model, out)
    return out


def test_manifest_records_each_files_size_and_sha256(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["00000", "00001", "00002"]
    for shard in manifest["shards"]:
        assert sorted(shard["files"]) == sorted(HOOKS)
        for hook, record in shard["files"].items():
            data = (reference / "shards" / shard["name"] / f"{hook}.npy").read_bytes()
            assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    report = verify_store(reference)
    assert report.ok and {c.status for c in report.checks} == {"ok"} and len(report.checks) == 2 + 3 * 2


def test_a_truncated_shard_is_named_on_open_with_how_to_recover(reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    os.truncate(store / "shards" / "00001" / "blocks.1.attn.hook_z.npy", 100)  # truncate -s 100
    with pytest.raises(StoreError) as err:
        ActivationStore.open(store)
    message = str(err.value)
    assert "shard 00001 (index 1, examples 3..5), hook blocks.1.attn.hook_z: 100 bytes, the manifest records" in message
    assert "--repair" in message and "remove shard(s) [1]" in message
    assert "blocks.0.hook_resid_post" not in message  # only the damaged file is named
    (store / "shards" / "00002" / "blocks.0.hook_resid_post.npy").unlink()
    with pytest.raises(StoreError, match=r"(?s)index 1.*hook blocks.0.hook_resid_post: missing"):
        ActivationStore.open(store)


def test_rerunning_on_a_damaged_store_names_it_and_repair_restores_identical_bytes(tiny_model, reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    os.truncate(store / "shards" / "00001" / "blocks.1.attn.hook_z.npy", 100)
    with pytest.raises(StoreError, match="shard 00001"):
        _cache(tiny_model, store)  # the finished store's shards are not recomputed: it says why it fails
    # The recovery the message gives by hand: drop shard 1 from the manifest, rerun the same call.
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["index"] != 1]
    (store / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert _cache(tiny_model, store).complete
    assert _files(store) == _files(reference)


def test_cli_repair_then_rerun_gives_a_byte_identical_store(hf_folder, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    pd.DataFrame({"text": TEXTS}).to_json(data, orient="records", lines=True)
    args = ["cache", "--model", str(hf_folder[0]), "--data", str(data), "--hooks", *HOOKS, "--positions", "all",
            "--store-dtype", "float16", "--batch-size", "2", "--shard-size", "3", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "ref")]) == 0
    assert main(args + ["--out", str(tmp_path / "damaged")]) == 0
    assert _files(tmp_path / "damaged") == _files(tmp_path / "ref")
    os.truncate(tmp_path / "damaged" / "shards" / "00000" / "blocks.0.hook_resid_post.npy", 100)
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "damaged")]) == 1
    assert "hook blocks.0.hook_resid_post" in _printed(capsys)
    assert main(args + ["--out", str(tmp_path / "damaged"), "--repair"]) == 0
    assert "dropped damaged shard(s) [0]" in _printed(capsys)
    assert _files(tmp_path / "damaged") == _files(tmp_path / "ref")
    assert main(args + ["--out", str(tmp_path / "damaged"), "--repair"]) == 0
    assert "matches its checksum" in _printed(capsys)


def test_verify_catches_a_flipped_byte(tiny_model, reference, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    assert main(["verify", str(store)]) == 0
    assert "OK" in _printed(capsys)
    file = store / "shards" / "00002" / "blocks.0.hook_resid_post.npy"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0x01  # same size: open still works, only the checksum sees it
    file.write_bytes(bytes(data))
    ActivationStore.open(store)
    assert main(["verify", str(store)]) == 1
    out = _printed(capsys)
    assert "DAMAGED" in out and "[2]" in out and "mismatch" in out
    assert main(["verify", str(store), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    bad = [c for c in report["checks"] if c["status"] != "ok"]
    assert report["damaged_shards"] == [2] and [(c["shard"], c["hook"]) for c in bad] == [("2", HOOKS[0])]
    assert repair_store(store) == [2] and not (store / "shards" / "00002").exists()
    partial = ActivationStore.open(store)
    assert not partial.complete and len(partial) == 6
    _cache(tiny_model, store)
    assert _files(store) == _files(reference) and verify_store(store).ok


def test_a_store_from_before_sizes_were_recorded_opens_and_is_checked_by_its_headers(tmp_path):
    assert "files" not in json.loads((LEGACY / "manifest.json").read_text())["shards"][0]
    old = ActivationStore.open(LEGACY)
    assert len(old) == 4
    report = verify_store(LEGACY)
    assert report.ok and {c.status for c in report.checks if c.shard != "-"} == {"unchecked"}
    store = tmp_path / "legacy"
    shutil.copytree(LEGACY, store)
    file = store / "shards" / "00001" / "blocks.1.attn.hook_z.npy"
    header_size = file.stat().st_size - int(np.prod(np.load(file, mmap_mode="r").shape)) * 2
    os.truncate(file, file.stat().st_size - 2)
    with pytest.raises(StoreError, match=r"shard 00001 .*hook blocks.1.attn.hook_z: \d+ bytes, its .npy header needs"):
        ActivationStore.open(store)
    os.truncate(file, header_size - 10)  # the header itself cut short
    with pytest.raises(StoreError, match="hook blocks.1.attn.hook_z: unreadable .npy header"):
        ActivationStore.open(store)
    assert not verify_store(store).ok and repair_store(store) == [1]
    assert len(ActivationStore.open(store)) == 2


def test_a_file_with_the_wrong_shape_is_named(reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    file = store / "shards" / "00000" / "blocks.0.hook_resid_post.npy"
    np.save(file, np.zeros((2, 64), np.float16))  # a consistent .npy, but not this shard's rows
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][0]["files"]["blocks.0.hook_resid_post"]["size"] = file.stat().st_size
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"shard 00000 .*holds float16\[2, 64\], expected float16\[\d+, 64\]"):
        ActivationStore.open(store)
