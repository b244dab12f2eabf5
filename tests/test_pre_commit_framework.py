"""The pre-commit framework runs this repository's hook (`pre-commit try-repo` on a clone
of the committed repository, which pip-installs runner into pre-commit's own venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.git_helpers import git, make_repo, write

ROOT = Path(__file__).resolve().parent.parent

SPEC = """version: 1
inputs:
  src: {path: src, git: true}
derivations:
  no-fixme:
    builder: /bin/sh
    args: ["-c", "! grep -rn FIXME ${{ src }} && touch $out"]
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),  # pre-commit pip-installs runner into its own venv
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout"),
]


def try_repo(hook_repo: Path, project: Path) -> subprocess.CompletedProcess[str]:
    # As a module of this interpreter: pre-commit is a declared test dependency, on PATH
    # or not (pytest run from a venv that is not activated), so this never skips.
    return subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo),
                           "runner"], cwd=project,
                          capture_output=True, text=True, timeout=600)


def test_try_repo_runs_the_runner_hook(tmp_path: Path, isolated_env: Path) -> None:
    hook_repo = tmp_path / "runner-clone"
    git(tmp_path, "clone", "-q", str(ROOT), str(hook_repo))
    conf = isolated_env / "config" / "runner" / "runner.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("sandbox = off\n")
    project = make_repo(tmp_path / "project", {"runner.yaml": SPEC, "src/a.txt": "ok\n"})

    write(project, "src/a.txt", "FIXME\n")
    git(project, "add", "src/a.txt")
    failed = try_repo(hook_repo, project)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "runner checks" in failed.stdout and "Failed" in failed.stdout
    assert "FIXME" in failed.stdout  # the failing check's log tail

    write(project, "src/a.txt", "fine\n")
    git(project, "add", "src/a.txt")
    passed = try_repo(hook_repo, project)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Passed" in passed.stdout
