"""Out-links: an existing symlink is replaced (whatever it points to, as nix-build does);
a file or directory in the way is refused before any link is made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.build.out_links import create_out_links
from runner.cli.main import run
from runner.errors import RunnerError
from tests.build_helpers import write_spec

SPEC = """derivations:
  one: {builder: /bin/sh, args: ["-c", "echo 1 > $out"]}
  two: {builder: /bin/sh, args: ["-c", "echo 2 > $out"]}
"""


def _build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    spec = write_spec(tmp_path, SPEC)
    code = run(["build", "--sandbox=off", "-o", str(tmp_path / "result"), spec, "one", "two"])
    return code, capsys.readouterr().err


def test_links_left_by_nix_or_another_store_are_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], store_dir: str,
        state_dir: str) -> None:
    os.symlink("/nix/store/00000000000000000000000000000000-x", tmp_path / "result")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep me\n")
    os.symlink(elsewhere, tmp_path / "result-2")
    code, err = _build(tmp_path, capsys)
    assert code == 0, err
    assert (tmp_path / "result").read_text() == "1\n"
    assert (tmp_path / "result-2").read_text() == "2\n"
    assert os.readlink(tmp_path / "result").startswith(store_dir + "/")
    assert elsewhere.read_text() == "keep me\n"  # the old link's target is left alone
    roots = os.listdir(os.path.join(state_dir, "gcroots", "auto"))
    assert len(roots) == 2


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_file_or_directory_in_the_way_is_refused_and_nothing_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    blocker = tmp_path / "result-2"
    if kind == "file":
        blocker.write_text("mine\n")
    else:
        blocker.mkdir()
    code, err = _build(tmp_path, capsys)
    assert code == 1 and f"a {kind} of that name exists" in err
    assert not os.path.lexists(tmp_path / "result")  # all or nothing
    assert blocker.is_dir() if kind == "directory" else blocker.read_text() == "mine\n"
    with pytest.raises(RunnerError) as info:
        create_out_links("/unused", "/unused", str(tmp_path / "result"),
                         [{"out": "/unused/a"}, {"out": "/unused/b"}])
    assert info.value.reason == "bad-root"
