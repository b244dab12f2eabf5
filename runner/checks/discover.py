"""Which spec `runner check` means when none is named: `runner.yaml` or `.runner.yaml`
at the root of the git work tree (or of the current directory outside git)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from runner.errors import RunnerError

DEFAULT_SPECS = ("runner.yaml", ".runner.yaml")


def repo_root(start: Path) -> Path | None:
    """The top of the git work tree holding `start`, or None outside one."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start,
                              capture_output=True, stdin=subprocess.DEVNULL)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return Path(os.fsdecode(proc.stdout.rstrip(b"\n")))


def looks_like_spec(arg: str) -> bool:
    """`runner check [SPEC] [NAME…]`: a first argument that is a file or a YAML name is the
    spec; anything else is a check name (derivation keys cannot contain `.` or `/`)."""
    return os.path.isfile(arg) or arg.endswith((".yaml", ".yml")) or "/" in arg


def default_spec(start: Path) -> Path:
    root = repo_root(start) or start
    for name in DEFAULT_SPECS:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise RunnerError(f"no spec given and neither {' nor '.join(DEFAULT_SPECS)} exists in "
                      f"'{root}'", reason="no-spec")
