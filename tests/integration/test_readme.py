"""Every Python example in the README runs."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).parents[2] / "README.md"


def test_readme_python_examples_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write runs/ under the current folder
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([1, 6, 576])" in out and "Paris" in out
    assert "(4, 576)" in out and "selectivity" in out and (tmp_path / "runs" / "acts-demo" / "manifest.json").is_file()
