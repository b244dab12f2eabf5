"""Run the real CLI in-process, capturing its output."""

from __future__ import annotations

import contextlib
import io

from runner.cli import main


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`runner ARGV…` → (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main.run(list(argv))
    return code, out.getvalue(), err.getvalue()
