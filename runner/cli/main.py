"""Entry point: builds the argument parser from the command modules and owns the
one error handler (`error: …` and an exit code, never a traceback)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from runner import __version__
from runner.errors import RunnerError
from runner.settings import Settings

# Each module exposes `register(sub)`; its parsers set `func(args, settings) -> int`.
# The commands each module registers: only the module of the command asked for
# is imported (start-up time), all of them for help and errors.
COMMAND_MODULES = {
    "runner.cli.spec": ("validate", "instantiate", "show", "graph"),
    "runner.cli.build": ("build", "log"),
    "runner.cli.check": ("check", "hook"),
    "runner.cli.store": ("store",),
    "runner.cli.maintenance": ("gc", "why-depends"),
    "runner.cli.cache": ("copy", "cache", "key"),
    "runner.cli.remote": ("remote",),
    "runner.cli.config": ("config",),
    "runner.cli.hash": ("hash",),
    "runner.cli.why": ("diff", "why"),
}

# Dedicated flags store their typed value under `dest="setting:<name>"`.
FLAG_PREFIX = "setting:"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise RunnerError(f"{self.prog}: {message}", reason="usage")


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("global options")
    group.add_argument("--store-dir", dest=FLAG_PREFIX + "store-dir", metavar="DIR",
                       help="store directory (setting store-dir)")
    group.add_argument("--state-dir", dest=FLAG_PREFIX + "state-dir", metavar="DIR",
                       help="state directory (setting state-dir)")
    group.add_argument("--option", nargs=2, action="append", default=[],
                       metavar=("NAME", "VALUE"), help="set any setting (see `runner config show`)")


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    found: list[argparse.ArgumentParser] = []
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            found.extend(_leaf_parsers(child))
    return found


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="A declarative pipeline runner.")
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    command = argv[0] if argv else None
    wanted = [m for m, commands in COMMAND_MODULES.items() if command in commands]
    for name in wanted or COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for leaf in _leaf_parsers(parser):
        _add_common(leaf)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    flags = {}
    for key, value in vars(args).items():
        if key.startswith(FLAG_PREFIX) and value is not None:
            name = key[len(FLAG_PREFIX):]
            flags[name] = value
    from runner.settings import lookup

    for name in ("store-dir", "state-dir"):
        if name in flags:
            flags[name] = lookup(name).parse(flags[name])
    return Settings.load(options=dict(args.option or []), flags=flags)


def run(argv: Sequence[str]) -> int:
    """Parse and run one command; user errors become `error: …` on stderr."""
    try:
        args = build_parser(argv).parse_args(list(argv))
        settings = _settings_from(args)
        code: int = args.func(args, settings)
        return code
    except RunnerError as e:
        for line in str(e).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 141
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, never a traceback
        print(f"error: internal error: {type(e).__name__}: {e} "
              "(please report this with the command that caused it)", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(run(sys.argv[1:] if argv is None else argv))
