"""Check results kept as GC roots: `runner gc` keeps the latest passing result of each
check of each repository, `runner store roots` lists every root, `runner check --forget`
and a repository that is gone release them. Real git repositories and a real store."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from runner.cli.main import run
from runner.store.local_store import LocalStore
from tests.build_helpers import counts
from tests.git_helpers import git, make_repo, write


def spec(counter: Path) -> str:
    return f"""version: 1
inputs:
  code: {{path: src, git: true}}
defaults:
  builder: /bin/sh
derivations:
  lint:
    args: ["-c", "echo lint >> {counter}; ! grep -rn TODO ${{{{ code }}}} && touch $out"]
  tests:
    args: ["-c", "echo tests >> {counter}; mkdir $out $junit; echo ok > $junit/r.xml"]
    outputs: [out, junit]
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = make_repo(tmp_path / "repo", {"runner.yaml": spec(tmp_path / "ran"),
                                         "src/main.sh": "echo main\n"})
    monkeypatch.chdir(repo)
    return repo


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    code = run(["check", "--sandbox=off", "--json", *argv])
    out = capsys.readouterr().out
    assert code in (0, 100), out
    return {o["name"]: f"{o['result']}/{o['how']}" for o in json.loads(out)}


def gc(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert run(["gc", "--json", *argv]) == 0
    out, err = capsys.readouterr()
    result: dict[str, object] = json.loads(out)
    schema = json.loads(resources.files("runner").joinpath("schemas/gc.schema.json")
                        .read_text())
    jsonschema.Draft202012Validator(schema).validate(result)
    result["stderr"] = err
    return result


def roots(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert run(["store", "roots", "--json"]) == 0
    listed: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return listed


def strings(value: object) -> set[str]:
    assert isinstance(value, list)
    return {str(v) for v in value}


def ran(repo: Path) -> dict[str, int]:
    return counts(repo.parent / "ran")


def test_gc_keeps_passing_check_results(repo: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys) == {"lint": "pass/new", "tests": "pass/new"}
    collected = gc(capsys)
    results = ("-lint", "-tests", "-tests-junit")
    assert not [p for p in strings(collected["deleted"]) if p.endswith(results)]
    # The next commit's checks are all cached: nothing ran again.
    assert check(capsys) == {"lint": "pass/cached", "tests": "pass/cached"}
    assert ran(repo) == {"lint": 1, "tests": 1}


def test_store_roots_lists_every_kind(repo: Path, store_dir: str, state_dir: str,
                                      tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    check(capsys)
    assert run(["build", "runner.yaml", "lint", "-o", str(tmp_path / "result")]) == 0
    capsys.readouterr()
    with LocalStore(store_dir, state_dir) as store:
        held = store.add_path(str(repo / "src"))
        direct = Path(state_dir) / "gcroots" / "by-hand" / "src"
        direct.parent.mkdir(parents=True)
        direct.symlink_to(held)
        store.temp_roots.add_temp_root(held)
        listed = roots(capsys)
    kinds = {(r["kind"], r.get("check"), r.get("output")): r for r in listed}
    lint = kinds[("check", "lint", "out")]
    assert lint["repository"] == str(repo.resolve()) and lint["repositoryExists"] is True
    assert str(lint["path"]).endswith("-lint")
    assert str(kinds[("check", "tests", "junit")]["path"]).endswith("-tests-junit")
    assert kinds[("out-link", None, None)]["link"] == str(tmp_path / "result")
    assert kinds[("out-link", None, None)]["path"] == lint["path"]
    assert kinds[("direct", None, None)] == {"path": held, "kind": "direct",
                                             "link": str(direct)}
    temp = kinds[("temporary", None, None)]
    assert temp["pid"] == os.getpid() and temp["path"] == held
    assert run(["store", "roots"]) == 0
    text = capsys.readouterr().out
    assert f"check 'lint' (out) of '{repo.resolve()}' -> {lint['path']}" in text


def test_forget_releases_this_repository(repo: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    check(capsys)
    other = make_repo(tmp_path / "other", {"runner.yaml": spec(tmp_path / "ran-other"),
                                           "src/main.sh": "echo other\n"})
    os.chdir(other)
    check(capsys)
    assert run(["check", "--forget", "lint"]) == 1
    assert "give at most a spec, no check names" in capsys.readouterr().err
    os.chdir(repo)
    assert run(["check", "--forget"]) == 0
    err = capsys.readouterr().err
    assert f"released the kept results of 2 checks of '{repo.resolve()}'" in err
    assert {r["repository"] for r in roots(capsys)} == {str(other.resolve())}
    # Results already valid are kept again by the next run, not only new ones.
    assert check(capsys) == {"lint": "pass/cached", "tests": "pass/cached"}
    assert len([r for r in roots(capsys) if r["repository"] == str(repo.resolve())]) == 3
    os.chdir(tmp_path)  # from elsewhere, naming the spec
    assert run(["check", "--forget", str(repo / "runner.yaml")]) == 0
    assert "released the kept results of 2 checks" in capsys.readouterr().err
    os.chdir(repo)
    gc(capsys)
    # The other repository's results are kept; this one's checks run again.
    assert check(capsys) == {"lint": "pass/new", "tests": "pass/new"}
    assert ran(repo) == {"lint": 2, "tests": 2}


def test_gone_repository_is_released_by_gc(repo: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check(capsys)
    outputs = {str(r["path"]) for r in roots(capsys)}
    assert len(outputs) == 3
    os.chdir(tmp_path)
    shutil.rmtree(repo)
    listed = roots(capsys)
    assert {r["repositoryExists"] for r in listed} == {False}
    dry = gc(capsys, "--dry-run")
    assert dry["checkRootsReleased"] == [str(repo.resolve())]
    assert "would release the check results" in str(dry["stderr"])
    assert outputs <= strings(dry["deleted"])
    assert len(roots(capsys)) == 3  # a dry run releases nothing
    real = gc(capsys)
    assert real["deleted"] == dry["deleted"]
    assert real["checkRootsReleased"] == [str(repo.resolve())]
    assert roots(capsys) == []
    assert not any(os.path.lexists(p) for p in outputs)


def test_latest_result_replaces_the_previous_one(repo: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    check(capsys, "lint")
    first = {str(r["path"]) for r in roots(capsys)}
    write(repo, "src/main.sh", "echo changed\n")
    git(repo, "add", "-A")
    check(capsys, "lint")
    second = {str(r["path"]) for r in roots(capsys)}
    assert len(first) == len(second) == 1 and first != second
    assert first <= strings(gc(capsys)["deleted"])
    # A failing run keeps the last passing result rooted (reverting is then instant).
    write(repo, "src/main.sh", "echo TODO\n")
    git(repo, "add", "-A")
    assert check(capsys, "lint") == {"lint": "FAIL/new"}
    assert {str(r["path"]) for r in roots(capsys)} == second
