"""The activation store: numbers against run_with_cache, streaming, resume after kill -9, bad input."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.store import ActivationStore, ShardedArray, StoreError

TEXTS = [
    "the cat sat on the mat",
    "the dog",
    "what is the capital of france ?",
    "red",
    "paris is the capital of france and rome is the capital of italy",
    "the house was blue",
    "a dog ran to a cat",
]
HOOKS = ["blocks.*.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"]


def _reference(model, text, hook):
    _, cache = model.run_with_cache(text, names_filter=hook)
    return cache[hook][0].numpy()  # [pos, *features]


@pytest.mark.parametrize("path", [None, "disk"])
@pytest.mark.parametrize("positions", ["all", "last", "mean", slice(-3, None), [0, 1, -1, 1, 5, -2, 2]])
def test_stored_activations_equal_run_with_cache(tiny_model, tmp_path, path, positions):
    store = wb.cache_activations(tiny_model, TEXTS, hooks=HOOKS, positions=positions, batch_size=3,
                                 shard_size=4, path=tmp_path / "s" if path else None, progress=False)
    assert len(store) == len(TEXTS) and store.complete
    # Forward order, as in the catalogue.
    assert store.hooks == ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z",
                           "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    for i, text in enumerate(TEXTS):
        n = len(tiny_model.to_str_tokens(text))
        assert store.tokens(i) == tiny_model.to_str_tokens(text)
        for hook in store.hooks:
            ref = _reference(tiny_model, text, hook)
            got = store.example(hook, i)
            if positions == "all":
                expected = ref
            elif positions == "last":
                expected = ref[-1]
            elif positions == "mean":
                expected = ref[1:].mean(0) if n > 1 else ref[0]
            elif isinstance(positions, slice):
                expected = ref[positions]
            else:
                expected = ref[positions[i]]
            assert got.shape == expected.shape, (hook, i)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)  # batched vs single: BLAS order


def test_metadata_columns_and_input_kinds(tiny_model):
    frame = pd.DataFrame({"sentence": TEXTS, "label": [0, 1, 0, 1, 1, 0, 1], "group": list("aabbccd")})
    store = wb.cache_activations(tiny_model, frame, text_column="sentence", hooks="blocks.1.hook_resid_post", progress=False)
    assert store.meta[["text", "label", "group"]].values.tolist() == frame.values.tolist()
    assert store.meta["n_tokens"].tolist() == [len(tiny_model.to_str_tokens(t)) for t in TEXTS]
    from_series = wb.cache_activations(tiny_model, pd.Series(TEXTS), hooks="blocks.1.hook_resid_post", progress=False)
    from_generator = wb.cache_activations(tiny_model, (t for t in TEXTS), hooks="blocks.1.hook_resid_post", progress=False)
    x = store["blocks.1.hook_resid_post"]
    assert np.array_equal(np.asarray(x), np.asarray(from_series["blocks.1.hook_resid_post"]))
    assert np.array_equal(np.asarray(x), np.asarray(from_generator["blocks.1.hook_resid_post"]))
    by_column = wb.cache_activations(tiny_model, frame.assign(pos=1), text_column="sentence",
                                     hooks="blocks.0.hook_resid_post", positions="pos", progress=False)
    assert by_column.positions_of(0) == [1]


def test_disk_store_is_memory_mapped_and_zero_copy(tiny_model, tmp_path):
    wb.cache_activations(tiny_model, TEXTS, hooks=HOOKS, positions="all", path=tmp_path / "s",
                         dtype="float16", shard_size=3, progress=False)
    store = ActivationStore.open(tmp_path / "s")
    X = store["blocks.2.hook_resid_post"]
    assert X.dtype == np.float16 and len(X.parts) == 3
    assert all(isinstance(p, np.memmap) for p in X.parts)
    tensor = X.torch_parts()[0]
    assert tensor.dtype == torch.float16 and np.shares_memory(tensor.numpy(), X.parts[0])
    full = np.asarray(X)
    assert full.shape == (store.meta["row_stop"].iloc[-1], 64)
    assert np.array_equal(X[3:17], full[3:17]) and np.array_equal(X[[0, 16, 5]], full[[0, 16, 5]])
    assert np.array_equal(X[-1], full[-1]) and np.array_equal(X[full[:, 0] > 0], full[full[:, 0] > 0])
    assert np.array_equal(X[2:9, :4], full[2:9, :4])
    assert store["blocks.1.attn.hook_z"].shape == (len(full), 4, 16)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and [s["name"] for s in manifest["shards"]] == ["00000", "00001", "00002"]
    assert manifest["config"]["model"]["fingerprint"] == tiny_model.source.fingerprint
    assert {"torch", "transformers", "numpy"} <= set(manifest["versions"])
    with pytest.raises(KeyError, match="closest"):
        store["blocks.2.hook_resid_pst"]


def test_store_written_before_the_shared_versions_opens_and_resumes(tiny_model, tmp_path):
    """Stores saved before ``workbench.common.versions`` recorded other versions keys (and no
    python); readers and resumption must not care what that block holds."""
    wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", path=tmp_path / "s",
                         shard_size=3, progress=False)
    manifest_file = tmp_path / "s" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert {"python", "transformer-lens"} <= set(manifest["versions"])
    manifest["versions"] = {"workbench": "0.1.0", "torch": "2.5.1", "transformers": "4.46.0",
                            "transformer_lens": "?", "numpy": "2.1.0", "pandas": "2.2.3"}
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False  # killed after shard 0
    manifest_file.write_text(json.dumps(manifest, indent=1))
    old = ActivationStore.open(tmp_path / "s")
    assert len(old) == 3 and not old.complete
    resumed = wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", path=tmp_path / "s",
                                   shard_size=3, progress=False)
    assert resumed.complete and len(resumed) == len(TEXTS)


def test_to_activation_cache(tiny_model):
    store = wb.cache_activations(tiny_model, TEXTS[:2], hooks="blocks.*.hook_resid_post", positions="all", progress=False)
    cache = store.to_activation_cache(tiny_model, 0)
    _, ref = tiny_model.run_with_cache(TEXTS[0], names_filter="blocks.*.hook_resid_post")
    stacked, _ = cache.stack_activation("resid_post"), None
    assert torch.allclose(stacked, torch.stack([ref[f"blocks.{i}.hook_resid_post"] for i in range(3)]), atol=1e-5)


# --- crash safety -----------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import os, signal, sys
    import workbench as wb
    from workbench.store import format as store_format
    folder, out, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}
    def die_after(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > n:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper
    if mode == "write":      # mid-shard, while rows are being written
        store_format._DiskShard.write = die_after(store_format._DiskShard.write)
    elif mode == "record":   # a shard renamed into place but not yet in the manifest
        store_format.DiskSink.shard_done = die_after(store_format.DiskSink.shard_done)
    model = wb.load_model(folder, device="cpu")
    TEXTS = {texts!r}
    wb.cache_activations(model, TEXTS, hooks={hooks!r}, positions="all", path=out, batch_size=2,
                         shard_size=3, dtype="float16", progress=False)
""")


def _files(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            out[str(p.relative_to(folder))] = p.read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("created")
    out["manifest"] = manifest
    return out


@pytest.fixture(scope="module")
def uninterrupted(hf_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    model = wb.load_model(hf_folder[0], device="cpu")
    wb.cache_activations(model, TEXTS, hooks=HOOKS, positions="all", path=out, batch_size=2,
                         shard_size=3, dtype="float16", progress=False)
    return _files(out)


@pytest.mark.parametrize("mode,n", [("write", 0), ("write", 7), ("write", 32), ("record", 1), ("record", 2)])
def test_kill_9_then_resume_gives_identical_store(hf_folder, tmp_path, uninterrupted, mode, n):
    out = tmp_path / "store"
    script = _CHILD.replace("{texts!r}", repr(TEXTS)).replace("{hooks!r}", repr(HOOKS))
    child = subprocess.run([sys.executable, "-c", script, str(hf_folder[0]), str(out), mode, str(n)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    partial = ActivationStore.open(out)  # opens up to the last complete shard
    assert not partial.complete and len(partial) in (0, 3, 6)
    model = wb.load_model(hf_folder[0], device="cpu")
    store = wb.cache_activations(model, TEXTS, hooks=HOOKS, positions="all", path=out, batch_size=2,
                                 shard_size=3, dtype="float16", progress=False)
    assert store.complete and len(store) == len(TEXTS)
    assert _files(out) == uninterrupted
    assert not list(out.rglob("*.tmp*"))


def test_different_arguments_into_same_path_are_refused(tiny_model, tmp_path):
    wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", path=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="different arguments.*positions"):
        wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", positions="all",
                             path=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="data_hash"):
        wb.cache_activations(tiny_model, TEXTS[:3], hooks="blocks.0.hook_resid_post", path=tmp_path / "s", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not an activation store"):
        wb.cache_activations(tiny_model, TEXTS, path=tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "thesis.tex").read_text() == "precious"


def test_disk_full_keeps_complete_shards_and_resumes(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr("workbench.store.format.os.pwrite", _pwrite_failing_in_shard_1(os.pwrite))
    with pytest.raises(StoreError, match=r"shard 1 failed \(No space left on device\).*shards 0..0"):
        wb.cache_activations(tiny_model, TEXTS, hooks=HOOKS, positions="all", path=tmp_path / "s",
                             shard_size=3, progress=False)
    partial = ActivationStore.open(tmp_path / "s")
    assert len(partial) == 3 and not partial.complete
    assert not list((tmp_path / "s").rglob("*.tmp*"))
    monkeypatch.undo()
    store = wb.cache_activations(tiny_model, TEXTS, hooks=HOOKS, positions="all", path=tmp_path / "s",
                                 shard_size=3, progress=False)
    assert store.complete and len(store) == len(TEXTS)
    np.testing.assert_allclose(store.example("blocks.2.hook_resid_post", 4),
                               _reference(tiny_model, TEXTS[4], "blocks.2.hook_resid_post"), atol=1e-5)


def _pwrite_failing_in_shard_1(real):
    def pwrite(fd, data, offset):
        if "/shards/00001.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    return pwrite


# --- bad input ---------------------------------------------------------------------------


def test_bad_input_is_named(tiny_model):
    with pytest.raises(ValueError, match="matches no hook.*did you mean"):
        wb.cache_activations(tiny_model, TEXTS, hooks="blocks.1.hook_resid_pots", progress=False)
    with pytest.raises(ValueError, match="empty"):
        wb.cache_activations(tiny_model, [], progress=False)
    with pytest.raises(TypeError, match="row 2 is float"):
        wb.cache_activations(tiny_model, ["a", "b", float("nan")], progress=False)
    with pytest.raises(TypeError, match="single string"):
        wb.cache_activations(tiny_model, "the cat", progress=False)
    with pytest.raises(ValueError, match="attention patterns"):
        wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.attn.hook_pattern", progress=False)
    with pytest.raises(ValueError, match="positions row 1: position 5"):
        wb.cache_activations(tiny_model, TEXTS[:2], positions=[0, 5], progress=False)
    with pytest.raises(ValueError, match="neither 'last'"):
        wb.cache_activations(tiny_model, TEXTS, positions="first", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        wb.cache_activations(tiny_model, TEXTS, dtype="int8", progress=False)


def test_texts_longer_than_the_context(tiny_model):
    long_text = " ".join(["the cat"] * 100)  # 201 tokens > n_ctx 128
    with pytest.warns(UserWarning, match=r"1 texts longer than the context window \(128 tokens\).*rows \[1\]"):
        store = wb.cache_activations(tiny_model, ["red", long_text], hooks="blocks.0.hook_resid_post",
                                     positions="all", progress=False)
    assert store.meta["n_tokens"].tolist() == [2, 128]
    with pytest.raises(ValueError, match="row 1 has 201 tokens"):
        wb.cache_activations(tiny_model, ["red", long_text], too_long="error", progress=False)


def test_sharded_array_indexing():
    parts = [np.arange(6).reshape(3, 2), np.arange(6, 8).reshape(1, 2), np.arange(8, 14).reshape(3, 2)]
    X, full = ShardedArray(parts), np.arange(14).reshape(7, 2)
    assert X.shape == (7, 2) and len(X) == 7 and X.nbytes == full.nbytes
    for index in [0, 3, -1, slice(None), slice(2, 5), slice(None, None, 2), [6, 0, 3], np.array([1, 1])]:
        assert np.array_equal(X[index], full[index]), index
    assert np.array_equal(X[(slice(1, 6), 1)], full[1:6, 1])
    with pytest.raises(IndexError):
        X[7]


def test_one_mistyped_pattern_among_good_ones_is_named(tiny_model):
    with pytest.raises(ValueError, match=r"hooks='blocks.0.hook_mlp_ot' matches no hook.*blocks.0.hook_mlp_out"):
        wb.cache_activations(tiny_model, TEXTS, hooks=["blocks.*.hook_resid_post", "blocks.0.hook_mlp_ot"], progress=False)


def test_cli_cache_writes_and_resumes(hf_folder, tmp_path, capsys):
    from workbench.cli import main

    data = tmp_path / "data.jsonl"
    pd.DataFrame({"sentence": TEXTS, "label": range(len(TEXTS))}).to_json(data, orient="records", lines=True)
    args = ["cache", "--model", str(hf_folder[0]), "--data", str(data), "--text-column", "sentence",
            "--hooks", "blocks.*.hook_resid_post", "blocks.1.attn.hook_z", "--positions=-2:",
            "--store-dtype", "float32", "--batch-size", "2", "--out", str(tmp_path / "store"), "--device", "cpu"]
    assert main(args) == 0
    store = ActivationStore.open(tmp_path / "store")
    assert store.complete and store.meta["label"].tolist() == list(range(len(TEXTS)))
    assert store["blocks.1.attn.hook_z"].shape == (2 * len(TEXTS), 4, 16)
    before = (tmp_path / "store" / "shards" / "00000" / "blocks.0.hook_resid_post.npy").read_bytes()
    assert main(args) == 0  # a finished store: rerunning changes nothing
    assert (tmp_path / "store" / "shards" / "00000" / "blocks.0.hook_resid_post.npy").read_bytes() == before
    assert main(args[:-4] + ["--positions", "last", "--out", str(tmp_path / "store")]) == 1
    assert "different arguments" in capsys.readouterr().out


@pytest.mark.parametrize("positions", ["all", "last", slice(10, None)])
def test_token_table_has_the_bytes_of_the_pandas_frame_of_lists(tiny_model, tmp_path, positions):
    """The plan keeps flat arrays (O(shard) memory); tokens.parquet must still be byte-identical
    to writing the frame of Python lists that stores were written from before."""
    store = wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", positions=positions,
                                 path=tmp_path / "s", shard_size=3, progress=False)
    frame = pd.DataFrame({
        "token_ids": [tiny_model.to_tokens(t)[0].tolist() for t in TEXTS],
        "str_tokens": [tiny_model.to_str_tokens(t) for t in TEXTS],
        "stored_positions": [store.positions_of(i) for i in range(len(TEXTS))],
    })
    oracle = tmp_path / "oracle.parquet"
    frame.to_parquet(oracle, index=False)
    assert (tmp_path / "s" / "tokens.parquet").read_bytes() == oracle.read_bytes()
    memory = wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", positions=positions,
                                  progress=False)
    assert [memory.tokens(i) for i in range(7)] == [store.tokens(i) for i in range(7)] == frame["str_tokens"].tolist()
    assert [memory.positions_of(i) for i in range(7)] == frame["stored_positions"].tolist()


def test_token_table_written_in_row_groups_reads_back_whole(tiny_model, tmp_path, monkeypatch):
    """tokens.parquet is written a batch of examples at a time (memory O(batch)); a table of
    several row groups reads back as the same frame, and the data hash is the one-piece hash."""
    import hashlib

    import pyarrow.parquet as pq

    from workbench.store import plan as plan_module

    one = wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", positions="all",
                               path=tmp_path / "one", progress=False)
    lengths = one.meta["n_tokens"].tolist()
    monkeypatch.setattr(plan_module, "TOKEN_BATCH_TOKENS", lengths[0] + lengths[1])
    many = wb.cache_activations(tiny_model, TEXTS, hooks="blocks.0.hook_resid_post", positions="all",
                                path=tmp_path / "many", progress=False)
    groups = pq.ParquetFile(tmp_path / "many" / "tokens.parquet").metadata
    assert 1 < groups.num_row_groups < len(TEXTS)
    assert groups.row_group(0).num_rows == 2  # whole examples up to the budget
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "many" / "tokens.parquet"),
                                  pd.read_parquet(tmp_path / "one" / "tokens.parquet"))
    assert [many.tokens(i) for i in range(len(TEXTS))] == [one.tokens(i) for i in range(len(TEXTS))]
    frame = pd.DataFrame({"text": [f"row {i} \u00e9" for i in range(11)], "label": range(11)})
    whole = hashlib.sha256(frame.to_json(orient="records", lines=True, default_handler=str).encode()).hexdigest()
    assert plan_module._data_hash(frame, rows_per_chunk=3) == plan_module._data_hash(frame) == whole


def test_conversations_are_cached_as_the_model_sees_them(tiny_model, tmp_path):
    """A conversation row is rendered with the chat template (one BOS) and stored as rendered;
    its activations equal run_with_cache on model.chat_tokens."""
    model = wb.load_model(tiny_model.source.path, device="cpu", chat_template="chatml")
    conversation = [{"role": "user", "content": "the cat sat on a mat"}]
    store = wb.cache_activations(model, [conversation, "the dog ran"], hooks="blocks.1.hook_resid_post",
                                 positions="all", path=tmp_path / "s", progress=False)
    tokens = model.chat_tokens(conversation)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    rows = slice(0, tokens.shape[1])  # positions="all": example 0's rows come first
    np.testing.assert_allclose(store["blocks.1.hook_resid_post"][rows], cache["blocks.1.hook_resid_post"][0].numpy(),
                               atol=1e-5)
    assert store.meta["text"][0] == model.format_chat(conversation)
    assert store.meta["chat"].tolist() == [True, False]
    assert store.meta["n_tokens"][0] == tokens.shape[1]
    assert (store.token_table.iloc[0]["token_ids"] == tokens[0].numpy()).all()
    with pytest.raises(TypeError, match="wrap it in a list"):
        wb.cache_activations(model, conversation, progress=False)
    with pytest.raises(TypeError, match="row 1 is dict"):
        wb.cache_activations(model, ["a", {"role": "user"}], progress=False)
