"""`runner build` hands the worker the derivations it has just translated (issue 16:
memory and time per node): no `.drv` is read back and parsed during the build."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.store.derivation import Derivation
from runner.store.local_store import LocalStore
from tests.build_helpers import build

SPEC = """version: 1
derivations:
  a:
    builder: /bin/sh
    args: ["-c", "echo a > $out"]
  b:
    builder: /bin/sh
    args: ["-c", "cat ${{ a }} > $out; echo b >> $out"]
"""


def test_build_reads_back_no_derivation_it_wrote(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    reads: list[str] = []
    real = LocalStore.read_derivation

    def counted(self: LocalStore, path: str) -> Derivation:
        reads.append(path)
        return real(self, path)

    monkeypatch.setattr(LocalStore, "read_derivation", counted)
    code, out, err = build(capsys, str(spec), "b")  # `a` is built as b's dependency
    assert code == 0, err
    assert Path(out.split()[0]).read_text() == "a\nb\n"
    assert reads == []
