"""The command table, lazy registration and the generated CLI reference."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from runner.cli.main import COMMAND_MODULES, build_parser
from runner.cli.reference import cli_markdown

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
