"""The `workbench` command's shared options mean the same in every command (parser level, no model)."""

import argparse

import pytest

from workbench.cli import build_parser
from workbench.cli.options import MODEL_DTYPES

MODEL_COMMANDS = ["info", "hooks", "cache", "probe", "patch", "demo", "eval"]
REQUIRED = {  # the least each command needs to parse
    "info": [], "hooks": [], "demo": [], "eval": [],
    "cache": ["--data", "d.csv", "--out", "store"],
    "probe": ["--concept", "gender", "--out", "probe"],
    "patch": ["--clean", "a", "--corrupt", "b", "--out", "patch"],
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def test_every_command_that_loads_a_model_has_the_same_model_options():
    commands = subcommands(build_parser())
    assert set(MODEL_COMMANDS) <= set(commands)
    for name in MODEL_COMMANDS:
        sub = commands[name]
        opts = options(sub)
        assert not [a for a in sub._actions if a.dest == "model" and not a.option_strings], name  # not positional
        assert opts["--model"].default is None, name
        assert tuple(opts["--dtype"].choices) == MODEL_DTYPES and opts["--dtype"].default == "float32", name
        assert opts["--dtype"].dest == "dtype" and "model" in opts["--dtype"].help, name
        assert {"--device", "--no-verify"} <= set(opts), name
    # only the store has a dtype of its own
    assert [n for n, sub in commands.items() if "--store-dtype" in options(sub)] == ["cache"]


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_model_and_dtype_parse_the_same_everywhere(name):
    args = build_parser().parse_args([name, *REQUIRED[name], "--model", "ckpt/", "--dtype", "bfloat16",
                                      "--device", "cpu", "--no-verify"])
    assert (args.model, args.dtype, args.device, args.no_verify) == ("ckpt/", "bfloat16", "cpu", True)
    defaults = build_parser().parse_args([name, *REQUIRED[name]])
    assert (defaults.model, defaults.dtype, defaults.device, defaults.no_verify) == (None, "float32", None, False)


@pytest.mark.parametrize("name", ["info", "hooks", "demo"])
def test_a_positional_model_is_refused(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "ckpt/"])
    assert exit_info.value.code == 2 and "unrecognized arguments: ckpt/" in capsys.readouterr().err


def test_cache_separates_the_model_dtype_from_the_store_dtype():
    args = build_parser().parse_args(["cache", *REQUIRED["cache"], "--dtype", "bfloat16", "--store-dtype", "float32"])
    assert (args.dtype, args.store_dtype) == ("bfloat16", "float32")
    assert build_parser().parse_args(["cache", *REQUIRED["cache"]]).store_dtype == "float16"  # the old default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cache", *REQUIRED["cache"], "--store-dtype", "bfloat16"])


def test_ray_options_are_one_group_in_cache_and_eval():
    commands = subcommands(build_parser())
    with_ray = [n for n, sub in commands.items() if "--ray" in options(sub)]
    assert sorted(with_ray) == ["cache", "eval"]
    for name in with_ray:
        args = build_parser().parse_args([name, *REQUIRED[name], "--ray", "local", "--workers", "3", "--threads", "2"])
        assert (args.ray, args.workers, args.threads) == ("local", 3, 2)
        defaults = build_parser().parse_args([name, *REQUIRED[name]])
        assert (defaults.ray, defaults.workers, defaults.threads) == (None, 2, 1)


def test_verify_keeps_its_positional_path():
    args = build_parser().parse_args(["verify", "llama-7b/", "--json"])
    assert args.path == "llama-7b/" and args.json and "--model" not in options(subcommands(build_parser())["verify"])
