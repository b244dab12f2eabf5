"""`runner hook install|uninstall`: a plain `.git/hooks/pre-commit` for users without the
pre-commit framework. A hook someone else wrote is never overwritten silently."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from runner.errors import RunnerError

MARKER = "# runner-hook: installed by `runner hook install`"
LEGACY_SUFFIX = ".legacy"


def hooks_dir(start: Path) -> Path:
    """Where git looks for hooks (honours core.hooksPath and linked worktrees)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=start,
                              capture_output=True, stdin=subprocess.DEVNULL)
    except OSError:
        raise RunnerError("'git' was not found", reason="git") from None
    if proc.returncode != 0:
        raise RunnerError(f"'{start}' is not inside a git repository", reason="git")
    return (start / os.fsdecode(proc.stdout.rstrip(b"\n"))).resolve()


def script(spec: str | None, python: str = sys.executable) -> str:
    """The hook: this interpreter's runner when it still exists, else `runner` on PATH."""
    args = "check --quiet" + (f" {shlex.quote(spec)}" if spec else "")
    py = shlex.quote(python)
    return (f"#!/bin/sh\n{MARKER}; `runner hook uninstall` removes it.\n"
            "# Runs the checks of the repository's runner spec on the staged content.\n"
            f"if [ -x {py} ]; then exec {py} -m runner {args}; fi\n"
            f"exec runner {args}\n")


def is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def install(start: Path, spec: str | None, *, force: bool) -> Path:
    directory = hooks_dir(start)
    hook = directory / "pre-commit"
    if hook.exists() and not is_ours(hook):
        if not force:
            raise RunnerError(f"'{hook}' exists and was not written by runner; pass --force "
                              f"to replace it (it is kept as pre-commit{LEGACY_SUFFIX})",
                              reason="hook-exists")
        legacy = hook.with_name("pre-commit" + LEGACY_SUFFIX)
        if legacy.exists():  # --force replaces the hook, never a hook saved earlier
            raise RunnerError(f"'{legacy}' exists already; move it away before replacing "
                              f"'{hook}'", reason="hook-exists")
        os.replace(hook, legacy)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = hook.with_name(".pre-commit.runner-tmp")
        tmp.write_text(script(spec))
        tmp.chmod(0o755)
        os.replace(tmp, hook)
    except OSError as e:
        raise RunnerError(f"cannot write '{hook}': {e.strerror}", reason="hook") from None
    return hook


def uninstall(start: Path) -> Path | None:
    """Remove our hook (restoring a replaced one); None when there was none of ours."""
    hook = hooks_dir(start) / "pre-commit"
    if not is_ours(hook):
        return None
    legacy = hook.with_name("pre-commit" + LEGACY_SUFFIX)
    try:
        if legacy.exists():
            os.replace(legacy, hook)
        else:
            hook.unlink()
    except OSError as e:
        raise RunnerError(f"cannot remove '{hook}': {e.strerror}", reason="hook") from None
    return hook
