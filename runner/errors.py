"""The one user-facing error type.

Everything a user can cause (bad spec, bad flag, corrupt file, failed build)
raises `RunnerError`; the CLI's single handler prints `error: …` and exits
with `exit_code`. Tests assert `reason`, not the wording; the reasons are the closed
set of runner/reasons.py.
"""

from __future__ import annotations

import os
from typing import NoReturn

from runner.reasons import Reason


class RunnerError(Exception):
    """An error meant for the user: one line, a reason code, an exit code."""

    def __init__(self, message: str, *, reason: str = "error", exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.reason = Reason.check(reason)  # ValueError for an unregistered code: a typo
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class SpecError(RunnerError):
    """One or more problems in spec files, each already `FILE:LINE:COL: message`."""

    def __init__(self, problems: list[str], *, reason: str = "spec") -> None:
        super().__init__("\n".join(problems), reason=reason, exit_code=1)
        self.problems = problems


NOT_VALID = "is not valid"  # how a store (ours or a Nix daemon) words an unknown path


def raise_not_valid(path: str) -> NoReturn:
    """The error for a well-formed store path that is not valid (registered) here."""
    raise RunnerError(f"path '{path}' {NOT_VALID}", reason=Reason.INVALID_PATH)


def os_error_text(what: str, e: OSError) -> str:
    """`WHAT: REASON ('FILE')` for an OSError: the file(s) it names, if any, else `what`
    alone, which therefore must say which file or operation failed (ENOSPC from a
    write or close carries no file name)."""
    reason = e.strerror or str(e) or type(e).__name__
    files = [os.fsdecode(f) for f in (e.filename, e.filename2) if isinstance(f, (str, bytes))]
    named = [f for f in files if f not in what]
    return f"{what}: {reason}" + "".join(f" ('{f}')" for f in named)
