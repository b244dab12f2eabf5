"""Outputs chosen on the command line as Nix does (`tests^junit`, `tests^*`), out-links
named as nix-build names them, and the dry run's wording."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.build.dry_run import Plan, describe
from runner.cli.main import run
from runner.errors import RunnerError
from runner.spec.load import load_spec
from runner.spec.targets import Target, parse_target, parse_targets
from tests.build_helpers import write_spec

SPEC = """derivations:
  tests:
    builder: /bin/sh
    outputs: [out, junit, coverage]
    args: ["-c", "echo o > $out; echo j > $junit; echo c > $coverage"]
  other: {builder: /bin/sh, args: ["-c", "echo x > $out"]}
"""


def test_parsing_names_and_outputs(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC))
    assert parse_target(spec, "tests") == Target("tests", None)
    assert parse_target(spec, "tests^*") == Target("tests", None)
    assert parse_target(spec, "tests^junit") == Target("tests", ("junit",))
    assert parse_target(spec, "tests^coverage,junit,coverage") == \
        Target("tests", ("coverage", "junit"))
    assert parse_targets(spec, ["tests^junit", "other", "tests^out"]) == \
        [Target("tests", ("junit", "out")), Target("other", None)]
    assert parse_targets(spec, ["tests^junit", "tests"]) == [Target("tests", None)]
    for text, words in (("tests^junt", "did you mean 'junit'?"),
                        ("test^junit", "did you mean 'tests'?"),
                        ("tests^", "an output name is missing after '^'"),
                        ("tests^junit,", "an output name is missing after '^'")):
        with pytest.raises(RunnerError) as info:
            parse_target(spec, text)
        assert info.value.reason == "not-found" and words in str(info.value)


def _build(capsys: pytest.CaptureFixture[str], tmp_path: Path, *names: str) -> tuple[
        int, list[str], str]:
    spec = write_spec(tmp_path, SPEC)
    code = run(["build", "--sandbox=off", "-o", str(tmp_path / "result"), spec, *names])
    out, err = capsys.readouterr()
    return code, out.split(), err


def _links(tmp_path: Path) -> dict[str, str]:
    return {p.name: p.read_text().strip() for p in sorted(tmp_path.iterdir())
            if p.name.startswith("result") and p.is_symlink()}


def test_one_output_is_printed_and_linked_as_result_junit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, err = _build(capsys, tmp_path, "tests^junit")
    assert code == 0, err
    assert [Path(p).name.split("-", 1)[1] for p in printed] == ["tests-junit"]
    assert _links(tmp_path) == {"result-junit": "j"}
    # Asked again (the no-op fast path): the same selection.
    os.unlink(tmp_path / "result-junit")
    code, again, _ = _build(capsys, tmp_path, "tests^junit")
    assert (code, again) == (0, printed) and _links(tmp_path) == {"result-junit": "j"}


def test_star_selects_every_output_and_a_second_name_is_result_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, err = _build(capsys, tmp_path, "tests^*", "other")
    assert code == 0, err
    assert len(printed) == 4
    assert _links(tmp_path) == {"result": "o", "result-coverage": "c", "result-junit": "j",
                                "result-2": "x"}


def test_an_unknown_output_is_a_clean_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _build(capsys, tmp_path, "tests^junt")
    assert code == 1 and "did you mean 'junit'?" in err and "Traceback" not in err
    assert _links(tmp_path) == {}


def test_dry_run_wording_is_singular_for_one() -> None:
    one = Plan(build=["/s/a.drv"], fetch=["/s/x"])
    assert describe(one).splitlines()[::2] == ["this derivation will be built:",
                                               "this path will be fetched:"]
    two = Plan(build=["/s/a.drv", "/s/b.drv"], fetch=["/s/x", "/s/y"])
    assert describe(two).splitlines()[::3] == ["these 2 derivations will be built:",
                                               "these 2 paths will be fetched:"]
