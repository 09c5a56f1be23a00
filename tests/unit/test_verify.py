"""Checklists (Meta's checklist.chk, sha256 manifests), structure checks, and `workbench verify`."""

import hashlib
import json

import pytest
from tiny_hf import write_hf_folder

from workbench.cli import main
from workbench.common.errors import CheckpointError, ChecksumError
from workbench.models.loading import load_model
from workbench.models.verify import verify_checkpoint


def _write_checklist(folder, algorithm="md5", name="checklist.chk"):
    lines = []
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix not in (".chk", ".sha256"):
            lines.append(f"{hashlib.new(algorithm, file.read_bytes()).hexdigest()}  {file.name}")
    (folder / name).write_text("\n".join(lines) + "\n")
    return len(lines)


@pytest.fixture
def checked_folder(tmp_path):
    folder = tmp_path / "model"
    write_hf_folder(folder)
    n = _write_checklist(folder)
    return folder, n


def test_checklist_all_ok(checked_folder):
    folder, n = checked_folder
    report = verify_checkpoint(folder)
    assert report.ok and report.checklists == ["checklist.chk"]
    frame = report.frame()
    assert (frame.query("check == 'md5'")["status"] == "ok").sum() == n
    assert frame.query("check == 'structure'")["file"].tolist() == ["model.safetensors"]


def test_checklist_mismatch_and_missing_are_reported_per_file(checked_folder):
    folder, _ = checked_folder
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    (folder / "tokenizer.json").unlink()
    report = verify_checkpoint(folder)
    assert not report.ok
    status = {c.file: c.status for c in report.checks if c.check == "md5"}
    assert status["config.json"] == "mismatch" and status["tokenizer.json"] == "missing"
    assert status["model.safetensors"] == "ok"


def test_sha256_manifest(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder)
    _write_checklist(folder, "sha256", "SHA256SUMS.sha256")
    assert verify_checkpoint(folder).ok
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only a hash can tell
    weights.write_bytes(bytes(data))
    bad = verify_checkpoint(folder).failures()
    assert [(c.file, c.check, c.status) for c in bad] == [("model.safetensors", "sha256", "mismatch")]


def test_malformed_checklist_line_is_named(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder)
    (folder / "checklist.chk").write_text("not-a-hash config.json\n")
    with pytest.raises(CheckpointError, match=r"checklist.chk: line 1"):
        verify_checkpoint(folder)


def test_load_model_verifies_by_default(checked_folder):
    folder, _ = checked_folder
    assert load_model(folder, device="cpu").info()["checksum_status"] == "verified"
    (folder / "generation_config.json").write_text("{}")
    with pytest.raises(ChecksumError, match="generation_config.json: mismatch"):
        load_model(folder, device="cpu")
    model = load_model(folder, device="cpu", verify=False)
    assert model.info()["checksum_status"] == "skipped"


def test_truncation_found_without_checklist(tmp_path):
    folder = tmp_path / "m"
    write_hf_folder(folder)
    assert verify_checkpoint(folder).ok and not verify_checkpoint(folder).has_checklist
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    [failure] = verify_checkpoint(folder).failures()
    assert failure.file == "model.safetensors" and "truncated" in failure.detail


def test_cli_verify_exit_codes(checked_folder, capsys):
    folder, _ = checked_folder
    assert main(["verify", str(folder)]) == 0
    assert "OK" in capsys.readouterr().out
    (folder / "config.json").write_text("{}")
    assert main(["verify", str(folder), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert {"file": "config.json", "check": "md5", "status": "mismatch"}.items() <= next(
        c for c in out["checks"] if c["file"] == "config.json").items()
    assert main(["verify", str(folder / "nowhere")]) == 1
    assert "no such file" in capsys.readouterr().out


def test_cli_info_and_hooks(hf_folder, capsys):
    assert main(["info", "--model", str(hf_folder[0]), "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 3 and info["format"] == "hf"
    assert main(["hooks", "--model", str(hf_folder[0]), "--filter", "blocks.*.hook_resid_post", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert main(["hooks", "--model", str(hf_folder[0])]) == 0
    assert "blocks.2.mlp.hook_post" in capsys.readouterr().out
