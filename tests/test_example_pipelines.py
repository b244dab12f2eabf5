"""The example test pipeline (specs/python-tests.yaml) and the example checks
(specs/checks.yaml) build, with the host tools they document, in the sandbox."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from runner.cli.main import run
from tests.git_helpers import git, make_repo

SPECS = Path(__file__).resolve().parent.parent / "specs"
HOST_PATH = "/usr/local/bin:/usr/bin:/bin"  # the build PATH the examples rely on


def host_python_has(*modules: str) -> bool:
    python = shutil.which("python3", path=HOST_PATH)
    return python is not None and all(
        subprocess.run([python, "-c", f"import {m}"], capture_output=True).returncode == 0
        for m in modules)


needs_pytest = pytest.mark.skipif(not host_python_has("pytest"),
                                  reason="the host's python3 has no pytest "
                                         "(apt-get install python3-pytest)")


def build(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = run(["build", "--json", "--no-out-link", *argv])
    out = capsys.readouterr().out
    results = {Path(r["drvPath"]).name.split("-", 1)[1][:-4]: r for r in json.loads(out)}
    return code, results


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """A copy of the example and its package, free to change."""
    shutil.copy(SPECS / "python-tests.yaml", tmp_path / "python-tests.yaml")
    shutil.copytree(SPECS / "python-package", tmp_path / "python-package",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    return tmp_path / "python-tests.yaml"


@needs_pytest
def test_pipeline_keeps_junit_and_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    code, results = build(capsys, str(SPECS / "python-tests.yaml"), "tests")
    assert code == 0, results
    outputs = results["tests"]["outputs"]
    suite = ET.parse(outputs["junit"]).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    report = (Path(outputs["coverage"]) / "report.txt").read_text()
    assert "greet" in report
    assert "1 passed" in Path(outputs["out"]).read_text()


@needs_pytest
def test_pipeline_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    """`--check` rebuilds the reports bit for bit: no clock in the JUnit XML, coverage.xml
    or pytest's summary line (all pinned to SOURCE_DATE_EPOCH by the builder script)."""
    spec = str(SPECS / "python-tests.yaml")
    code, results = build(capsys, spec, "tests")
    assert code == 0, results
    code = run(["build", "--check", "--no-out-link", spec, "tests"])
    assert code == 0, capsys.readouterr().err
    junit = ET.parse(results["tests"]["outputs"]["junit"]).getroot().find("testsuite")
    assert junit is not None and junit.get("timestamp") == "1970-01-01T00:00:01"


@needs_pytest
def test_failing_run_is_cached_and_a_test_change_reruns_only_the_tests(
        pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(capsys, str(pipeline))[0] == 0
    test_file = pipeline.parent / "python-package" / "tests" / "test_greet.py"
    test_file.write_text(test_file.read_text() + "\n\ndef test_wrong() -> None:\n"
                         "    assert 'sandboxed' == 'not sandboxed'\n")
    code, results = build(capsys, str(pipeline))
    assert code == 100
    assert results["package"]["status"] == "valid"  # only the tests depend on tests/
    assert results["tests"]["status"] == "failed"

    code = run(["build", "--no-out-link", str(pipeline)])
    err = capsys.readouterr().err
    assert code == 100
    assert "failed previously" in err and "test_wrong" in err  # the stored log tail


@needs_pytest
def test_pipeline_shows_the_junit_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["build", "--no-out-link", str(SPECS / "python-tests.yaml"), "tests"]) == 0
    assert "tests: 1 tests, 0 failed, 0 errors, 0 skipped" in capsys.readouterr().err


@pytest.mark.skipif(not host_python_has("unittest"), reason="no python3 on the build PATH")
def test_sharded_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """specs/sharded-tests.yaml: three shards of a unittest suite, each a third of the
    cases, gathered under `tests`; one merged JUnit file and a report for the run."""
    junit, page = tmp_path / "junit.xml", tmp_path / "run.html"
    code, results = build(capsys, "--sandbox=on", str(SPECS / "sharded-tests.yaml"),
                          "--junit", str(junit), "--report", str(page))
    assert code == 0, results
    shards = [f"tests.shard-{k}-of-3" for k in (1, 2, 3)]
    assert sorted(results) == sorted([*shards, "tests"])
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    cases = [c.get("name", "") for name in shards for c in suites[name].iter("testcase")]
    assert sorted(cases) == ["test_add", "test_div", "test_mul", "test_split", "test_sub",
                             "test_upper"]
    assert all(suites[name].get("tests") == "2" for name in shards)
    gathered = sorted(p.name for p in Path(results["tests"]["outputs"]["junit"]).iterdir())
    assert gathered == ["shard-1.xml", "shard-2.xml", "shard-3.xml"]
    assert page.read_text().count("class='bar'") == 4


@pytest.mark.skipif(not host_python_has("pytest", "ruff", "mypy"),
                    reason="the host's python3 lacks pytest, ruff or mypy")
def test_checks_example_on_a_small_repository(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo")
    for item in ("greet", "tests", "pyproject.toml"):
        source = SPECS / "python-package" / item
        if source.is_dir():
            shutil.copytree(source, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / item)
    (repo / "specs").mkdir()
    shutil.copy(SPECS / "checks.yaml", repo / "specs" / "checks.yaml")
    git(repo, "add", "-A")
    monkeypatch.chdir(repo)
    assert run(["check", "specs/checks.yaml"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "3 passed, 0 failed"
    (repo / "greet" / "__init__.py").write_text("def greet(name: str) -> str:\n    return 1\n")
    git(repo, "add", "-A")
    assert run(["check", "specs/checks.yaml", "typecheck"]) != 0
    assert "Incompatible return value" in capsys.readouterr().out


@needs_pytest
def test_checks_example_tests_run_as_in_a_checkout(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """What this repository's own suite needs from specs/checks.yaml's `tests` check in
    the sandbox: `python3 -m pkg` from any directory imports the checked copy, the copy is
    a git repository, and temp dirs lie outside the build dir the tests inspect."""
    repo = make_repo(tmp_path / "repo")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "__main__.py").write_text("print('the checked copy')\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_env.py").write_text(
        "import os, subprocess, sys, tempfile\n\n\n"
        "def test_env(tmp_path):\n"
        "    out = subprocess.run([sys.executable, '-m', 'pkg'], cwd=tmp_path,\n"
        "                         capture_output=True, text=True)\n"
        "    assert out.stdout == 'the checked copy\\n', out.stderr\n"
        "    git = subprocess.run(['git', 'ls-files'], capture_output=True, text=True)\n"
        "    assert 'pkg/__main__.py' in git.stdout.split(), git.stderr\n"
        "    assert not str(tmp_path).startswith(os.getcwd()), tmp_path\n")
    (repo / "specs").mkdir()
    shutil.copy(SPECS / "checks.yaml", repo / "specs" / "checks.yaml")
    git(repo, "add", "-A")
    monkeypatch.chdir(repo)
    assert run(["check", "specs/checks.yaml", "tests"]) == 0, capsys.readouterr()
