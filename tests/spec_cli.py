"""Run the real CLI in-process with the spec commands registered."""

from __future__ import annotations

import contextlib
import io

from runner.cli import main


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`runner ARGV…` → (exit code, stdout, stderr)."""
    modules = main.COMMAND_MODULES
    if "runner.cli.spec" not in modules:  # until main.py lists it
        main.COMMAND_MODULES = (*modules, "runner.cli.spec")
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main.run(list(argv))
    finally:
        main.COMMAND_MODULES = modules
    return code, out.getvalue(), err.getvalue()
