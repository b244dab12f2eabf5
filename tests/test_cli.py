"""The command table, lazy registration and the generated CLI reference."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli.main import COMMAND_MODULES, build_parser, run
from runner.cli.reference import cli_markdown
from runner.errors import RunnerError

ROOT = Path(__file__).resolve().parent.parent


def _top_level(parser: argparse.ArgumentParser) -> set[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


@pytest.mark.parametrize("module", sorted(COMMAND_MODULES))
def test_each_module_registers_exactly_its_listed_commands(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    assert _top_level(parser) == set(COMMAND_MODULES[module])


def test_a_command_imports_only_its_module_but_help_sees_all() -> None:
    spec_commands = set(COMMAND_MODULES["runner.cli.spec"])
    assert _top_level(build_parser(["validate", "x.yaml"])) == spec_commands
    everything = {c for commands in COMMAND_MODULES.values() for c in commands}
    assert _top_level(build_parser(["--help"])) == everything
    assert _top_level(build_parser(["no-such-command"])) == everything


def test_cli_reference_is_generated_from_the_parsers() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == cli_markdown(), "run: python -m runner.cli.reference > docs/cli.md"


# -- the command line users already know (issue 15)

def _walk(parser: argparse.ArgumentParser, path: str = "runner"):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


@pytest.mark.parametrize("argv, names, keep_going", [
    (["build", "spec.yaml", "-k", "a", "b"], ["a", "b"], True),
    (["build", "-k", "spec.yaml", "a", "b"], ["a", "b"], True),
    (["build", "spec.yaml", "a", "--no-out-link", "b"], ["a", "b"], None),
])
def test_flags_anywhere_among_positionals(argv: list[str], names: list[str],
                                          keep_going: bool | None) -> None:
    args = build_parser(argv).parse_args(argv)
    assert (args.spec, args.names) == ("spec.yaml", names)
    assert getattr(args, "setting:keep-going") is keep_going


def test_check_flags_anywhere() -> None:
    argv = ["check", "-j", "2", "x.yaml", "--fail-fast", "lint", "-q", "tests"]
    args = build_parser(argv).parse_args(argv)
    assert args.args == ["x.yaml", "lint", "tests"]
    assert (args.quiet, getattr(args, "setting:max-jobs"),
            getattr(args, "setting:keep-going")) == (True, 2, False)


def test_build_without_spec_names_only_the_required_spec() -> None:
    with pytest.raises(RunnerError) as e:
        build_parser(["build"]).parse_args(["build"])
    assert e.value.reason == "usage"
    assert e.value.message.endswith("the following arguments are required: SPEC")


def test_every_argument_of_every_command_has_help() -> None:
    missing = [f"{path} {a.option_strings or a.metavar or a.dest}"
               for path, parser in _walk(build_parser())
               for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


def test_the_help_stubs_say_what_each_module_registers() -> None:
    from runner.cli.main import COMMAND_HELP

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == COMMAND_HELP


def test_setting_flags_are_generated_from_the_settings_table() -> None:
    from runner.cli import args, main
    from runner.settings import lookup

    assert args.FLAG_PREFIX == main.FLAG_PREFIX  # main keeps its own: --help skips args
    flags = 0
    for path, parser in _walk(build_parser()):
        for a in parser._actions:
            if not a.dest.startswith("setting:") or a.dest in ("setting:store-dir",
                                                               "setting:state-dir"):
                continue
            flags += 1
            setting = lookup(a.dest[len("setting:"):])
            assert f"(setting {setting.name}" in (a.help or ""), (path, a.option_strings)
            if setting.kind == "enum":
                assert tuple(a.choices or ()) == setting.choices, (path, a.option_strings)
    assert flags >= 15  # build's and check's flags were seen


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_command_module(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *argv],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = {"runner.settings", "runner.store.local_store", "runner.cli.build", "yaml",
             "grpc", "jsonschema", "runner.cli.remote", "runner.cli.spec"}
    assert imported & heavy == set()
    assert "runner.cli.main" in imported  # the probe does see our modules


def test_a_build_without_an_http_cache_does_not_import_urllib3(tmp_path: Path) -> None:
    """urllib3 costs ~75 ms to import: only an HTTP cache's client needs it; nacl
    (~16 ms) only a key in use."""
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nderivations:\n  a:\n    builder: /bin/sh\n"
                    "    args: ['-c', 'echo a > $out']\n")
    cache = tmp_path / "cache"
    cache.mkdir()

    def imports(root: str, *extra: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "runner", "build", str(spec),
             "--no-out-link", "--store-dir", str(tmp_path / root / "store"), "--state-dir",
             str(tmp_path / root / "state"), "--sandbox=off", *extra],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}

    plain = imports("a", "--option", "substituters", f"file://{cache}")
    assert "urllib3" not in plain and "nacl.signing" not in plain
    # The control: an HTTP cache (nothing listens there; it only has to be opened).
    assert "urllib3" in imports("b", "--option", "substituters",
                                "http://127.0.0.1:9/?timeout=0.1&retries=0")


def test_cli_reference_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    cli_markdown()
    assert "COLUMNS" not in os.environ


def test_internal_error_says_how_to_get_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runner.cli.config

    def broken(args: argparse.Namespace, settings: object) -> int:
        raise ValueError("a bug")

    monkeypatch.setattr(runner.cli.config, "_show", broken)
    monkeypatch.delenv("RUNNER_DEBUG", raising=False)
    assert run(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ValueError: a bug" in err and "--show-trace" in err
    assert "Traceback" not in err
    assert run(["config", "show", "--show-trace"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("a bug")' in err
    monkeypatch.setenv("RUNNER_DEBUG", "1")
    assert run(["config", "show"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_every_command_parses_or_says_why_not() -> None:
    # A parser argparse cannot intermix parses flags-first, never a TypeError.
    from runner.cli.main import _can_intermix

    plain = []
    for path, parser in _walk(build_parser()):
        if not [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
            if not _can_intermix(parser):
                plain.append(path)
            try:  # a usage error is fine; argparse's TypeError (a crash) is not
                parser.parse_known_args([])
            except RunnerError as e:
                assert e.reason == "usage"
    assert set(plain) <= {"runner cache serve"}, plain
