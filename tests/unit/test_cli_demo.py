"""`workbench demo`'s printers write on the console they are given, not on a module-level one."""

import io

from rich.console import Console

from workbench.cli.demo import notebook_path, residual_norms, run_demo
from workbench.cli.models import print_info


def test_run_demo_prints_only_on_its_console(tiny_model, capsys):
    buffer = io.StringIO()
    run_demo(tiny_model, prompt="the cat", max_new_tokens=2, console=Console(file=buffer, width=120))
    text = buffer.getvalue()
    assert "model:" in text and "n_params" in text  # print_info's table, on the given console
    assert "answer:" in text and "residual stream norms" in text
    assert capsys.readouterr().out == ""  # nothing leaked to stdout


def test_print_info_and_residual_norms(tiny_model):
    buffer = io.StringIO()
    print_info({"name": "tiny", "n_params": 1234567}, Console(file=buffer))
    assert "model: tiny" in buffer.getvalue() and "1,234,567" in buffer.getvalue()
    frame = residual_norms(tiny_model, "the cat sat")
    assert frame["layer"].tolist() == list(range(tiny_model.cfg.n_layers)) and (frame["mean_norm"] > 0).all()


def test_notebook_path_finds_the_checkout_notebooks():
    path = notebook_path()
    assert path is not None and path.name == "04_safety_eval_suite.ipynb" and path.parent.name == "notebooks"


def test_run_suite_demo_writes_the_suite_and_its_report(tiny_model, tmp_path, monkeypatch):
    from workbench.cli.demo import run_suite_demo

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "no-data"))  # the built-in suites only: fast
    buffer = io.StringIO()
    report = run_suite_demo(tiny_model, tmp_path / "quick", limit=5, notebook=False,
                            console=Console(file=buffer, width=200))
    assert report == (tmp_path / "quick" / "report.html").resolve() and report.is_file()
    text = buffer.getvalue()
    assert "quick: headline metrics" in text and f"report: {report}" in text
    assert (tmp_path / "quick" / "suite.json").is_file()
