"""The shape of the package: layers (import-linter), lint (ruff), module size, no root imports."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "workbench"
MAX_LINES = 500


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .[test]` installs it"
    return found


def test_import_contracts_hold():
    """docs/architecture.md's layers, as the contracts in pyproject.toml say them."""
    result = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean_on_the_whole_tree():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_no_module_imports_the_root_package():
    """``workbench/__init__.py`` is above every floor: importing it from inside would pull in all."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "workbench" for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "workbench" and node.level == 0:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_public_api_is_small_and_every_name_resolves():
    import workbench as wb

    assert len(wb.__all__) <= 42
    assert wb.__all__[0] == "load_model"
    for name in wb.__all__:
        assert getattr(wb, name) is not None, name
    assert not hasattr(wb, "probes")  # probes/ is a data folder; the package is wb.probing
