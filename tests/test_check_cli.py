"""`runner check` on real git repositories: the summary, cached and new checks, cached
failures with their log tails, quiet hook output, spec discovery and staged changes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from runner.cli.main import run
from tests.build_helpers import counts
from tests.git_helpers import git, make_repo, write

ROOT = Path(__file__).resolve().parent.parent


def checks_spec(counter: Path) -> str:
    # Builders append their name to `counter` (outside the store; sandbox off) so a test
    # sees which checks really ran.
    return f"""version: 1
inputs:
  code: {{path: src, git: true}}
  docs: {{path: docs, git: true}}
defaults:
  builder: /bin/sh
derivations:
  lint:
    args: ["-c", "echo lint >> {counter}; ! grep -rn TODO ${{{{ code }}}} && touch $out"]
  tests:
    args: ["-c", "echo tests >> {counter}; . ${{{{ code }}}}/test.sh && touch $out"]
  spelling:
    args: ["-c", "echo spelling >> {counter}; ! grep -rn teh ${{{{ docs }}}} && touch $out"]
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    counter = tmp_path / "ran"
    repo = make_repo(tmp_path / "repo", {
        "runner.yaml": checks_spec(counter),
        "src/main.sh": "echo main\n",
        "src/test.sh": "echo 'testing...'; true\n",
        "docs/index.md": "the docs\n",
    })
    monkeypatch.chdir(repo)
    return repo


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["check", "--sandbox=off", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def outcomes(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str]]:
    code, out, _ = check(capsys, "--json", *argv)
    schema = json.loads((ROOT / "schemas" / "check-output.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(out))
    return code, {o["name"]: f"{o['result']}/{o['how']}" for o in json.loads(out)}


def ran(repo: Path) -> dict[str, int]:
    return counts(repo.parent / "ran")


def test_all_pass_then_nothing_runs_again(repo: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["check", "result", "time"]
    assert [line.split()[0::3] for line in lines[1:4]] == [
        ["lint", "new"], ["tests", "new"], ["spelling", "new"]]
    assert lines[-1] == "3 passed, 0 failed"
    assert outcomes(capsys) == (0, {"lint": "pass/cached", "tests": "pass/cached",
                                    "spelling": "pass/cached"})
    assert ran(repo) == {"lint": 1, "tests": 1, "spelling": 1}


def test_quiet_prints_nothing_on_success(repo: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys, "--quiet") == (0, "", "")


def test_failure_shows_the_log_tail_then_fails_from_the_cache(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "src/test.sh", "echo 'assertion failed: 1 != 2'; false\n")
    git(repo, "add", "src/test.sh")
    code, out, _ = check(capsys, "--quiet")
    assert code == 100
    assert "> assertion failed: 1 != 2" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("tests "))
    assert row[1] == "FAIL" and row[3] == "new"
    assert out.splitlines()[-1] == "2 passed, 1 failed"
    assert ran(repo) == {"lint": 1, "tests": 1, "spelling": 1}

    code, out, _ = check(capsys, "--quiet")
    assert code == 100
    assert "failed previously" in out and "> assertion failed: 1 != 2" in out
    assert outcomes(capsys)[1]["tests"] == "FAIL/cached"
    assert ran(repo) == {"lint": 1, "tests": 1, "spelling": 1}  # nothing ran again

    assert check(capsys, "--rebuild-failed", "tests")[0] == 100
    assert ran(repo)["tests"] == 2


def test_a_staged_change_reruns_exactly_what_depends_on_it(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys)[0] == 0
    write(repo, "docs/index.md", "teh docs\n")  # unstaged: the checks see the index
    assert outcomes(capsys)[1] == {"lint": "pass/cached", "tests": "pass/cached",
                                   "spelling": "pass/cached"}
    git(repo, "add", "docs/index.md")
    assert outcomes(capsys) == (100, {"lint": "pass/cached", "tests": "pass/cached",
                                      "spelling": "FAIL/new"})
    assert ran(repo) == {"lint": 1, "tests": 1, "spelling": 2}


def test_named_checks_only(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = outcomes(capsys, "lint")
    assert (code, result) == (0, {"lint": "pass/new"})
    code, result = outcomes(capsys, "runner.yaml", "spelling")
    assert (code, result) == (0, {"spelling": "pass/new"})
    assert run(["check", "--sandbox=off", "lnit"]) == 1
    assert "did you mean 'lint'" in capsys.readouterr().err


def test_spec_found_at_the_repository_root(repo: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo / "src")
    assert check(capsys, "--quiet")[0] == 0
    git(repo, "mv", "runner.yaml", ".runner.yaml")
    assert outcomes(capsys, "lint")[1] == {"lint": "pass/cached"}
    git(repo, "rm", "-q", "--cached", ".runner.yaml")
    (repo / ".runner.yaml").unlink()
    code, _, err = check(capsys)
    assert code == 1
    assert err.startswith("error: no spec given") and len(err.splitlines()) == 1


def test_fail_fast_counts_skipped_checks_apart_from_failures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "ff.yaml"
    spec.write_text("""version: 1
derivations:
  lint:
    builder: /bin/sh
    args: ["-c", "echo lint is unhappy; exit 1"]
  tests:
    builder: /bin/sh
    args: ["-c", "cat ${{ lint }} > $out"]
""")
    code, out, _ = check(capsys, "--fail-fast", str(spec))
    assert code == 100
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[-3:-1]}
    assert rows["lint"][0] == "FAIL" and rows["tests"][-1] == "skipped"
    assert out.splitlines()[-1] == "0 passed, 1 failed, 1 skipped"
    code, out, _ = check(capsys, "--fail-fast", "--json", str(spec))
    assert code == 100
    schema = json.loads((ROOT / "schemas" / "check-output.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(out))
    shown = {o["name"]: (o["passed"], o["failed"], o["skipped"]) for o in json.loads(out)}
    assert shown == {"lint": (False, True, False), "tests": (False, False, True)}
