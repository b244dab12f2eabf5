"""`runner hook install|uninstall` and the hook itself under a real `git commit`."""

from __future__ import annotations

import os
import subprocess
import sys
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
    (hooks / "pre-commit.before-runner").write_text("#!/bin/sh\necho first\n")
    assert run(["hook", "install", "--force"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (hooks / "pre-commit.before-runner").read_text() == "#!/bin/sh\necho first\n"
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


PRE_COMMIT_CONFIG = """\
repos:
  - repo: local
    hooks:
      - id: no-banned-word
        name: no banned word
        language: pygrep
        entry: "BAN[N]ED"
"""


def test_force_over_the_pre_commit_framework_runs_it_first(
        repo: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real pre-commit framework hook (`pre-commit install`), then runner's over it.
    write(repo, ".pre-commit-config.yaml", PRE_COMMIT_CONFIG)
    git(repo, "add", ".pre-commit-config.yaml")
    env = {**os.environ, "PRE_COMMIT_HOME": str(isolated_env / "cache" / "pre-commit")}
    installed = subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=repo,
                               env=env, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    hook = repo / ".git" / "hooks" / "pre-commit"
    framework = hook.read_text()
    assert "File generated by pre-commit" in framework

    assert run(["hook", "install", "--force"]) == 0
    said = capsys.readouterr().err
    assert "the pre-commit framework's hook is kept as" in said and "runs first" in said

    # runner's checks pass; the framework's hook must still stop the commit.
    write(repo, "src/a.txt", "BANNED word, no fixme\n")
    git(repo, "add", "src/a.txt")
    blocked = subprocess.run(["git", "commit", "-q", "-m", "banned"], cwd=repo, env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0, blocked.stdout + blocked.stderr
    assert "no banned word" in blocked.stdout + blocked.stderr
    assert "migration mode" not in blocked.stdout + blocked.stderr
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"

    # runner's own check still runs after the framework's passes.
    write(repo, "src/a.txt", "FIXME but allowed by the framework\n")
    git(repo, "add", "src/a.txt")
    blocked = subprocess.run(["git", "commit", "-q", "-m", "fixme"], cwd=repo, env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0
    assert "FIXME but allowed" in blocked.stdout + blocked.stderr

    write(repo, "src/a.txt", "fine\n")
    git(repo, "add", "src/a.txt")
    passed = subprocess.run(["git", "commit", "-q", "-m", "fine"], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "no banned word" in passed.stdout + passed.stderr  # the framework did run

    assert run(["hook", "uninstall"]) == 0
    said = capsys.readouterr().err
    assert "restored" in said and "pre-commit framework's hook" in said
    assert hook.read_text() == framework


def test_reinstall_moves_a_hook_an_older_runner_saved_so_it_runs(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks = repo / ".git" / "hooks"
    marker = repo.parent / "legacy-ran"
    assert run(["hook", "install"]) == 0
    (hooks / "pre-commit.legacy").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (hooks / "pre-commit.legacy").chmod(0o755)
    assert run(["hook", "install"]) == 0
    assert "runs first" in capsys.readouterr().err
    assert not (hooks / "pre-commit.legacy").exists()
    write(repo, "src/a.txt", "still fine\n")
    git(repo, "add", "src/a.txt")
    assert commit(repo, "ok").returncode == 0
    assert marker.exists()
