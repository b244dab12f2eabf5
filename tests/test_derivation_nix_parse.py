""".drv texts that Nix 2.8's parser takes but Nix never prints: runner reads them alike.

Each case is written with correct output paths (runner computes them), added with
`nix-store --add` (Nix 2.8 parses a `*.drv` it adds and checks its outputs), and
`nix show-derivation` is compared with runner's reading of the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli.spec import derivation_json
from runner.store import derivation
from tests.nix_oracle import NixOracle

pytestmark = pytest.mark.nix

_ENV = '("builder","/b"),("name","t"),("out","@OUT@"),("system","x")'
CASES = {
    "env-unsorted": f'Derive([("out","@OUT@","","")],[],[],"x","/b",[],[("z","1"),{_ENV}])',
    "env-repeated-key": (
        f'Derive([("out","@OUT@","","")],[],[],"x","/b",[],[("a","1"),("a","2"),{_ENV}])'
    ),
    "unknown-escape-raw-newline": (
        f'Derive([("out","@OUT@","","")],[],[],"x","/b",["a\\qb","c\nd"],[{_ENV}])'
    ),
    "args-and-srcs-unsorted": (
        'Derive([("out","@OUT@","","")],[],["@STORE@/0hm2f1psjpcwg8fijsmr4wwxrx59s092-b",'
        '"@STORE@/0hm2f1psjpcwg8fijsmr4wwxrx59s092-a"],"x","/b",["z","a"],[' + _ENV + "])"
    ),
    "latin1-bytes": (
        f'Derive([("out","@OUT@","","")],[],[],"x","/b",[],[("chars","\xc5\xc4\xd6"),{_ENV}])'
    ),
    "structured-attrs": (
        'Derive([("out","@OUT@","","")],[],[],"x","/b",[],[("__json",'
        '"{\\"builder\\":\\"/b\\",\\"name\\":\\"t\\",\\"system\\":\\"x\\"}"),("out","@OUT@")])'
    ),
}


def _no_inputs(path: str) -> derivation.Derivation:
    raise AssertionError(f"no input derivations here, asked for {path}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_nix_and_runner_read_the_same(case: str, oracle: NixOracle, tmp_path: Path) -> None:
    store = oracle.store_dir
    # Latin-1 in the template stands for raw bytes (one per character).
    template = CASES[case].replace("@STORE@", store).encode("latin-1")
    first = derivation.parse(template.replace(b"@OUT@", b""), "t.drv")
    out = derivation.fill_output_paths(first, store, _no_inputs, {}).outputs["out"].path
    data = template.replace(b"@OUT@", out.encode())
    (tmp_path / "t.drv").write_bytes(data)
    path = oracle.add(tmp_path / "t.drv")  # Nix parses it and checks `out`
    shown = oracle.run("nix", "show-derivation", path).decode("utf-8", "surrogateescape")
    ours = derivation.parse(data, path)
    assert json.loads(shown)[path] == derivation_json(ours)
    assert ours.name == "t"
    if case == "latin1-bytes":
        assert derivation.encode(ours.env["chars"]) == b"\xc5\xc4\xd6"


def test_no_outputs_parses_as_in_nix(oracle: NixOracle, tmp_path: Path) -> None:
    # Nix's parser takes it; what refuses it is the derivation type ("at least one
    # output"), not a parse error. runner's parser takes it too.
    data = b'Derive([],[],[],"x","/b",[],[("name","t")])'
    (tmp_path / "t.drv").write_bytes(data)
    with pytest.raises(AssertionError, match="must have at least one output"):
        oracle.add(tmp_path / "t.drv")
    drv = derivation.parse(data, "t.drv")
    assert drv.outputs == {}
    assert drv.data == data
