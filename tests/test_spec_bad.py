"""The corpus of bad specs: each gives exit 1, one positioned `error:` per problem, no
traceback, and writes nothing to the store.

A spec states what it expects in its header, one problem per line:
`# expect: [FILE:]LINE:COL: text` (FILE relative to the corpus; default the spec).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.spec_cli import run_cli

CORPUS = Path(__file__).parent / "specs_bad"
SPECS = sorted(CORPUS.glob("*.yaml"))
_EXPECT = re.compile(rb"^# expect: (?:(\S+\.yaml):)?(\d+):(\d+): (.*)$", re.M)


def _expected(spec: Path) -> list[tuple[str, str]]:
    found = []
    for m in _EXPECT.finditer(spec.read_bytes()):
        file = str(CORPUS / m.group(1).decode()) if m.group(1) else str(spec)
        found.append((f"error: {file}:{int(m.group(2))}:{int(m.group(3))}: ",
                      m.group(4).decode()))
    return found


def test_corpus_is_large_enough() -> None:
    assert len(SPECS) >= 25
    assert all(_expected(spec) for spec in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
@pytest.mark.parametrize("command", ["validate", "instantiate"])
def test_bad_spec(spec: Path, command: str, store_dir: str, state_dir: str) -> None:
    code, _out, err = run_cli(command, str(spec))
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    expected = _expected(spec)
    assert len(lines) == len(expected), err
    for line, (prefix, text) in zip(lines, expected, strict=True):
        assert line.startswith(prefix), (line, prefix)
        assert text in line[len(prefix):], (line, text)
    assert os.listdir(store_dir) == []
    assert os.listdir(state_dir) == []
