"""`runner hook install|uninstall` and the hook itself under a real `git commit`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runner.checks.hook import MARKER
from runner.cli.main import run
from tests.git_helpers import git, make_repo, write

SPEC = """version: 1
inputs:
  src: {path: src, git: true}
derivations:
  no-fixme:
    builder: /bin/sh
    args: ["-c", "! grep -rn FIXME ${{ src }} && touch $out"]
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {"runner.yaml": SPEC, "src/a.txt": "fine\n"})
    monkeypatch.chdir(repo)
    # The hook's `runner check` is a new process reading the (per-test) config file:
    # no sandbox, so no fallback warning where namespaces are unavailable.
    conf = isolated_env / "config" / "runner" / "runner.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("sandbox = off\n")
    return repo


def commit(repo: Path, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo,
                          capture_output=True, text=True)


def test_install_writes_an_executable_hook(repo: Path) -> None:
    assert run(["hook", "install"]) == 0
    hook = repo / ".git" / "hooks" / "pre-commit"
    assert MARKER in hook.read_text()
    assert os.access(hook, os.X_OK)
    assert run(["hook", "install"]) == 0  # our own hook may be rewritten


def test_foreign_hook_is_kept_unless_forced(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho mine\n")
    assert run(["hook", "install"]) == 1
    assert "--force" in capsys.readouterr().err
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    assert run(["hook", "install", "--force"]) == 0
    assert MARKER in hook.read_text()
    assert run(["hook", "uninstall"]) == 0
    assert hook.read_text() == "#!/bin/sh\necho mine\n"  # the replaced hook is back
    assert run(["hook", "uninstall"]) == 0
    assert hook.exists()  # not ours: left alone


def test_force_never_overwrites_a_hook_saved_earlier(repo: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    hooks = repo / ".git" / "hooks"
    (hooks / "pre-commit").write_text("#!/bin/sh\necho second\n")
    (hooks / "pre-commit.legacy").write_text("#!/bin/sh\necho first\n")
    assert run(["hook", "install", "--force"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (hooks / "pre-commit.legacy").read_text() == "#!/bin/sh\necho first\n"
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\necho second\n"


def test_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["hook", "install"]) == 1
    assert "not inside a git repository" in capsys.readouterr().err


def test_hook_blocks_a_commit_of_failing_staged_content(repo: Path) -> None:
    assert run(["hook", "install", "runner.yaml"]) == 0
    write(repo, "src/a.txt", "FIXME later\n")
    git(repo, "add", "src/a.txt")
    write(repo, "src/a.txt", "fixed on disk, not staged\n")
    blocked = commit(repo, "bad")
    assert blocked.returncode != 0
    assert "FIXME later" in blocked.stdout + blocked.stderr  # the log tail
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"

    git(repo, "add", "src/a.txt")
    passed = commit(repo, "good")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout + passed.stderr == ""  # quiet on success
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"


def test_hook_under_commit_all_checks_the_temporary_index(repo: Path) -> None:
    # `git commit -a` stages into a temporary index named by GIT_INDEX_FILE.
    assert run(["hook", "install"]) == 0
    write(repo, "src/a.txt", "FIXME via -a\n")
    proc = subprocess.run(["git", "commit", "-q", "-a", "-m", "all"], cwd=repo,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FIXME via -a" in proc.stdout + proc.stderr
