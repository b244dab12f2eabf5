"""`runner log`: by spec and name (inputs of dependencies included), by out-link or any
store path of an output, unknown names, empty logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.build.log_target import derivation_candidates, find_log, store_path_of
from runner.cli.main import run
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store.local_store import open_store
from tests.build_helpers import write_spec

SPEC = """inputs:
  src: {path: ./src}
derivations:
  package:
    builder: /bin/sh
    args: ["-c", "echo packaging; mkdir $out; cp ${{ src }}/a $out/a"]
  tests:
    builder: /bin/sh
    args: ["-c", "echo testing ${{ package }}; cat ${{ package }}/a > $out"]
  quiet:
    builder: /bin/sh
    args: ["-c", "mkdir $out"]
"""


@pytest.fixture
def built(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("hello\n")
    spec = write_spec(tmp_path, SPEC)
    link = str(tmp_path / "result")
    assert run(["build", "--sandbox=off", "-o", link, spec, "tests", "quiet"]) == 0
    capsys.readouterr()
    return spec


def _log(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["log", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_log_of_a_derivation_whose_dependency_uses_an_input(
        built: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _log(capsys, built, "tests")
    assert code == 0 and out.startswith("testing ") and out.rstrip().endswith("-package")
    code, out, _ = _log(capsys, built, "package")
    assert (code, out) == (0, "packaging\n")
    code, out, _ = _log(capsys, built, "package^out")  # as `runner build` names outputs
    assert (code, out) == (0, "packaging\n")


def test_unknown_name_is_a_clean_error_with_a_hint(
        built: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.load()
    with open_store(settings) as store, pytest.raises(RunnerError) as info:
        derivation_candidates(store, built, "test")
    assert info.value.reason == "not-found"
    code, _, err = _log(capsys, built, "test")
    assert code == 1 and "did you mean 'tests'?" in err and "internal error" not in err


def test_log_of_an_out_link_a_link_to_it_and_a_file_inside(
        built: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("result", tmp_path / "again")  # a relative link to the out-link
    os.chdir(tmp_path)
    for target in ("./result", "again", os.readlink(tmp_path / "result")):
        code, out, err = _log(capsys, target)
        assert code == 0 and out.startswith("testing "), (target, err)
    code, out, _ = _log(capsys, str(tmp_path / "result-2") + "/")  # `quiet`, trailing slash
    assert (code, out) == (0, "")

def test_package_output_file_resolves_to_its_store_path(built: str, store_dir: str) -> None:
    settings = Settings.load()
    with open_store(settings) as store:
        (package,) = derivation_candidates(store, built, "package")
        out = store.query_derivation_outputs(package)["out"]
        assert store_path_of(store_dir, out + "/a") == out
        assert derivation_candidates(store, out + "/a", None) == [package]
        assert find_log(store, settings.state_dir, out, None) == b"packaging\n"


def test_empty_log_says_so_on_stderr(built: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _log(capsys, built, "quiet")
    assert (code, out) == (0, "") and "(empty log)" in err


def test_targets_outside_the_store_are_refused(
        built: str, tmp_path: Path, store_dir: str) -> None:
    os.symlink("/etc/hostname", tmp_path / "elsewhere")
    settings = Settings.load()
    with open_store(settings) as store:
        for target, reason in ((str(tmp_path / "elsewhere"), "usage"), (built, "usage"),
                               (store_dir + "/" + "0" * 32 + "-gone", "no-log")):
            with pytest.raises(RunnerError) as info:
                find_log(store, settings.state_dir, target, None)
            assert info.value.reason == reason, target
