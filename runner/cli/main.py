"""Entry point: builds the argument parser from the command modules and owns the
one error handler (`error: …` and an exit code, never a traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.settings import Settings

# Each module exposes `register(sub)`; its parsers set `func(args, settings) -> int`.
# The commands each module registers: only the module of the command asked for
# is imported (start-up time).
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
    "runner.cli.completion": ("completion", "__complete-names"),
    "runner.cli.daemon": ("daemon",),
    "runner.cli.why": ("diff", "why"),
}

# The one-line help of each command, for `runner --help` without importing every
# command module (issue 16: --help costs no more than start-up + 20 ms).
# tests/test_cli.py checks each against the help its module registers.
COMMAND_HELP = {
    "validate": "check spec files; writes nothing",
    "instantiate": "write a spec's .drv files and inputs to the store",
    "show": "print derivations as `nix show-derivation` does",
    "graph": "print a spec's dependency graph",
    "build": "build derivations of a spec",
    "log": "print the build log of a derivation",
    "check": "run a spec's derivations as checks and summarise them",
    "hook": "install or remove a git pre-commit hook running `runner check`",
    "store": "work with the store directly",
    "gc": "delete store paths that no GC root keeps alive",
    "why-depends": "show why PATH depends on DEPENDENCY",
    "copy": "copy store paths (with their closure) to or from a cache",
    "cache": "binary cache tools",
    "key": "signing keys for binary caches",
    "remote": "remote execution (REAPI) servers",
    "config": "show settings",
    "hash": "hash files or file trees as Nix does",
    "completion": "print a shell completion script (bash, zsh or fish)",
    "daemon": "serve the store over Nix's worker protocol",
    "diff": "explain how two derivations differ, root cause first",
    "why": "show what changed in a derivation since it last built",
}

# Dedicated flags store their typed value under `dest="setting:<name>"`.
FLAG_PREFIX = "setting:"

TRACE_FLAG = "--show-trace"
DEBUG_ENV = "RUNNER_DEBUG"


class _Parser(argparse.ArgumentParser):
    """Errors are `RunnerError`s; a command's own flags may come anywhere among its
    positionals (`runner build spec.yaml -k a b`), as nix-build accepts them."""

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: `--store daemon` on a command without `--store` would
        # otherwise silently mean `--store-dir daemon`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise RunnerError(f"{self.prog}: {message}", reason="usage")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        # parse_known_intermixed_args calls back into parse_known_args (3.10-3.12).
        if self._intermixing or not _can_intermix(self):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _can_intermix(parser: argparse.ArgumentParser) -> bool:
    """argparse intermixes only a leaf parser without a positional in a mutually
    exclusive group (e.g. `runner cache serve [DIR | --from URL]`) and without
    REMAINDER: those keep flags before positionals."""
    if _subparsers(parser):
        return False
    if any(a.nargs in (argparse.REMAINDER, argparse.PARSER) for a in parser._actions):
        return False
    return not any(not a.option_strings for group in parser._mutually_exclusive_groups
                   for a in group._group_actions)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction[Any]]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("global options")
    group.add_argument("--store-dir", dest=FLAG_PREFIX + "store-dir", metavar="DIR",
                       help="store directory (setting store-dir)")
    group.add_argument("--state-dir", dest=FLAG_PREFIX + "state-dir", metavar="DIR",
                       help="state directory (setting state-dir)")
    group.add_argument("--option", nargs=2, action="append", default=[],
                       metavar=("NAME", "VALUE"), help="set any setting (see `runner config show`)")
    group.add_argument(TRACE_FLAG, action="store_true",
                       help=f"print the traceback of an internal error (or set {DEBUG_ENV}=1)")


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = _subparsers(parser)
    if not subs:
        return [parser]
    found: list[argparse.ArgumentParser] = []
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            found.extend(_leaf_parsers(child))
    return found


def _optional_positionals_not_required(parser: argparse.ArgumentParser) -> None:
    # argparse marks `nargs="*"` positionals without a default as required, so a
    # missing SPEC was reported as `required: SPEC, NAME`.
    for action in parser._actions:
        if not action.option_strings and action.nargs == argparse.ZERO_OR_MORE:
            action.required = False
            if action.default is None:
                action.default = []


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: the module of the command named, or every module when
    `argv` is None (reference, completion); any other argv (`--help`, a typo) gets
    each command as a stub carrying its one-line help."""
    parser = _Parser(prog="runner", description="A declarative pipeline runner.")
    parser.add_argument("--version", action="version", version=f"runner {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    command = argv[0] if argv else None
    wanted = [m for m, commands in COMMAND_MODULES.items() if command in commands]
    if argv is None or wanted:
        for name in wanted or COMMAND_MODULES:
            importlib.import_module(name).register(sub)
    else:
        _register_stubs(sub)
    for leaf in _leaf_parsers(parser):
        _add_common(leaf)
        _optional_positionals_not_required(leaf)
    return parser


def _register_stubs(sub: argparse._SubParsersAction[Any]) -> None:
    for module, commands in COMMAND_MODULES.items():
        if any(c not in COMMAND_HELP for c in commands if not c.startswith("__")):
            importlib.import_module(module).register(sub)  # no help text here yet
            continue
        for c in commands:  # hidden commands (`__…`) have no help entry
            if c.startswith("__"):
                sub.add_parser(c)
            else:
                sub.add_parser(c, help=COMMAND_HELP[c])


def _settings_from(args: argparse.Namespace) -> Settings:
    from runner.settings import Settings, lookup

    flags = {}
    for key, value in vars(args).items():
        if key.startswith(FLAG_PREFIX) and value is not None:
            name = key[len(FLAG_PREFIX):]
            flags[name] = value
    for name in ("store-dir", "state-dir"):
        if name in flags:
            flags[name] = lookup(name).parse(flags[name])
    return Settings.load(options=dict(args.option or []), flags=flags)


def _hand_to_sandbox(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """The sandbox executor reads `sandbox-fork-server` from its environment variable
    (it also runs outside the CLI): a value from the config file or --option goes
    there too."""
    if not settings.flag("sandbox-fork-server"):
        environ["RUNNER_SANDBOX_FORK_SERVER"] = "0"


def _wants_trace(argv: Sequence[str]) -> bool:
    return TRACE_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(argv: Sequence[str]) -> int:
    """Parse and run one command; user errors become `error: …` on stderr."""
    try:
        args = build_parser(argv).parse_args(list(argv))
        args.argv = ["runner", *argv]  # for reports that show the command line
        settings = _settings_from(args)
        _hand_to_sandbox(settings, os.environ)
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
    except Exception as e:  # a bug of ours: one line, the traceback only when asked
        if _wants_trace(argv):
            import traceback

            traceback.print_exc()
            how = ""
        else:
            how = f"; run again with {TRACE_FLAG} (or {DEBUG_ENV}=1) for the traceback"
        print(f"error: internal error: {type(e).__name__}: {e} "
              f"(please report this with the command that caused it{how})", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(run(sys.argv[1:] if argv is None else argv))
