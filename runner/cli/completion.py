"""`runner completion bash|zsh|fish`: shell completion scripts generated from the
argument parser by `shtab`, plus the hidden `runner __complete-names [SPEC]` that
the scripts call for the derivation names of the spec on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.settings import Settings

SHELLS = ("bash", "zsh", "fish")
NAMES_COMMAND = "__complete-names"

# The spec is the first word on the line ending in .yaml/.yml (as `runner check`
# recognises it); without one, `__complete-names` uses the default spec of the repo.
_BASH = r"""
_runner_spec_word() {
  local w
  for w in "${COMP_WORDS[@]:2:COMP_CWORD-2}"; do
    case "$w" in *.yaml|*.yml) printf '%s' "$w"; return;; esac
  done
}
_runner_names() {
  local spec; spec="$(_runner_spec_word)"
  compgen -W "$(runner __complete-names ${spec:+"$spec"} 2>/dev/null)" -- "$1"
}
_runner_spec_or_names() {
  [ -z "$(_runner_spec_word)" ] && compgen -f -- "$1"
  _runner_names "$1"
}
_runner_settings() {
  [ "${COMP_WORDS[COMP_CWORD-1]}" = --option ] && compgen -W "@SETTINGS@" -- "$1"
}
"""

_ZSH = r"""
_runner_names() {
  local spec w
  for w in ${words[3,CURRENT-1]}; do
    case $w in *.yaml|*.yml) spec=$w; break;; esac
  done
  local -a names
  names=(${(f)"$(runner __complete-names ${spec:+$spec} 2>/dev/null)"})
  compadd -a names
}
_runner_spec_or_names() {
  _runner_names
  _files
}
"""

_FISH = r"""
function __runner_names
    set -l spec
    for w in (commandline -opc)[3..-1]
        switch $w
            case '*.yaml' '*.yml'
                set spec $w
                break
        end
    end
    runner __complete-names $spec 2>/dev/null
end
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)",
                       description="Print the completion script for SHELL; e.g. in ~/.bashrc: "
                                   "source <(runner completion bash).")
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
    p.set_defaults(func=_completion)
    # Hidden (no help entry in the command list): called by the scripts above.
    names = sub.add_parser(NAMES_COMMAND)
    names.add_argument("spec", nargs="?", metavar="SPEC",
                       help="spec file (default: runner.yaml of the repository)")
    names.set_defaults(func=_names)


def script(shell: str) -> str:
    import shtab

    from runner.cli.main import build_parser
    from runner.settings import SETTINGS

    parser = build_parser()
    settings = " ".join(s.name for s in SETTINGS)
    _annotate(parser, settings)
    preamble = {"bash": _BASH.replace("@SETTINGS@", settings), "zsh": _ZSH, "fish": _FISH}[shell]
    return str(shtab.complete(parser, shell=shell, preamble=preamble))


def _annotate(parser: argparse.ArgumentParser, settings: str) -> None:
    """Tell shtab what each argument completes to, from its metavar."""
    spec_files = {"bash": "_shtab_compgen_files", "zsh": "_files", "fish": "(__fish_complete_path)"}
    names = {"bash": "_runner_names", "zsh": "_runner_names", "fish": "(__runner_names)"}
    either = {"bash": "_runner_spec_or_names", "zsh": "_runner_spec_or_names",
              "fish": "(__runner_names) (__fish_complete_path)"}
    option = {"bash": "_runner_settings", "zsh": f"({settings})", "fish": settings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _annotate(child, settings)
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        complete: dict[str, str] | None = None
        if "--option" in action.option_strings:
            complete = option
        elif metavar == "NAME" and not action.option_strings:
            complete = names
        elif metavar == "[SPEC] NAME":
            complete = either
        elif metavar in ("SPEC", "DRV|OUTPUT|SPEC"):
            complete = spec_files
        if complete is not None:
            action.complete = complete  # type: ignore[attr-defined]


def _completion(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(script(args.shell))
    return 0


def _names(args: argparse.Namespace, settings: Settings) -> int:
    """Derivation names of SPEC, one a line; nothing (and exit 1) when it does not load."""
    from runner.checks.discover import default_spec
    from runner.spec.load import load_spec

    path = Path(args.spec) if args.spec else default_spec(Path.cwd())
    for name in load_spec(path).derivations:
        print(name)
    return 0
