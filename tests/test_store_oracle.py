"""`runner store …` against real Nix 2.8: same paths, same NAR bytes, same hashes.

Our store dir is the oracle's store dir, so equal contents must give equal
paths; the state dirs (databases) stay separate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.cli import main as cli_main
from runner.store.local_store import LocalStore
from tests.nix_oracle import NixOracle

pytestmark = pytest.mark.nix


def _cli(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, bytes]:
    code = cli_main.run(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err


def _make(kind: str, root: Path) -> Path:
    root.mkdir(parents=True)
    if kind == "file":
        target = root / "hello.txt"
        target.write_text("hello world\n")
    elif kind == "empty-file":
        target = root / "empty"
        target.write_bytes(b"")
    elif kind == "executable":
        target = root / "tool.sh"
        target.write_text("#!/bin/sh\necho hi\n")
        target.chmod(0o700)
    elif kind == "symlink":
        target = root / "dangling"
        target.symlink_to("/does/not/exist")
    elif kind == "empty-dir":
        target = root / "nothing"
        target.mkdir()
    else:  # a tree with everything, odd names and a larger file
        target = root / "tree"
        (target / "a" / "b" / "c").mkdir(parents=True)
        (target / "a" / "b" / "c" / "deep.txt").write_text("deep")
        (target / "Zeta").write_text("upper case sorts first")
        (target / "ünïcødé name").write_text("names are bytes")
        (target / "big.bin").write_bytes(bytes(range(256)) * 4099)
        (target / "x.sh").write_text("exit 0\n")
        (target / "x.sh").chmod(0o755)
        (target / "link-to-dir").symlink_to("a/b")
        (target / "empty-dir").mkdir()
        (target / "pad7").write_bytes(b"1234567")
    return target


KINDS = ["file", "empty-file", "executable", "symlink", "empty-dir", "tree"]


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_dump_match_nix(
    oracle: NixOracle, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], kind: str
) -> None:
    src = _make(kind, tmp_path / "src")
    code, out, err = _cli(capsysbinary, "store", "add", str(src), "--store-dir", oracle.store_dir)
    assert code == 0, err
    ours = out.decode().strip()
    assert ours == oracle.add(src)
    code, nar_bytes, err = _cli(capsysbinary, "store", "dump", ours)
    assert code == 0, err
    assert nar_bytes == oracle.dump(ours)
    assert nar_bytes == oracle.dump(src)


def test_path_info_matches_nix(
    oracle: NixOracle, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    src = _make("tree", tmp_path / "src")
    code, out, _ = _cli(capsysbinary, "store", "add", str(src), "--store-dir", oracle.store_dir)
    path = out.decode().strip()
    assert oracle.add(src) == path
    code, out, err = _cli(capsysbinary, "store", "path-info", "--json", path,
                          "--store-dir", oracle.store_dir)
    assert code == 0, err
    (info,) = json.loads(out)
    nix_hash = oracle.run("nix-store", "--query", "--hash", path).decode().strip()
    nix_size = oracle.run("nix-store", "--query", "--size", path).decode().strip()
    assert info["narHash"] == nix_hash
    assert info["narSize"] == int(nix_size)
    assert info["references"] == [] and info["deriver"] is None
    code, out, _ = _cli(capsysbinary, "store", "path-info", path, "--store-dir", oracle.store_dir)
    assert code == 0 and nix_hash in out.decode()


def test_derivation_text_paths_match_nix(oracle: NixOracle, tmp_path: Path,
                                         store_dir: str, state_dir: str) -> None:
    script = tmp_path / "build.sh"
    script.write_text("echo built > $out\n")
    (drv_path,) = oracle.instantiate(
        f'derivation {{ name = "demo"; system = "x86_64-linux"; builder = "/bin/sh";'
        f' args = [ {script} ]; }}'
    )
    nix_text = Path(drv_path).read_bytes()
    with LocalStore(oracle.store_dir, state_dir) as store:
        src = store.add_path(str(script))
        drv = store.read_derivation(drv_path)
        assert list(drv.input_srcs) == [src]
        assert store.write_derivation(drv) == drv_path
        assert Path(drv_path).read_bytes() == nix_text
        assert store.query_references(drv_path) == {src}
        out = drv.outputs["out"].path
        assert store.query_valid_derivers(out) == {drv_path}


def test_cli_errors(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path,
                    store_dir: str) -> None:
    code, _, err = _cli(capsysbinary, "store", "add", str(tmp_path / "missing"))
    assert code == 1 and err.startswith(b"error: ")
    code, _, err = _cli(capsysbinary, "store", "dump", str(tmp_path / "missing"))
    assert code == 1 and err.startswith(b"error: ")
    fake = os.path.join(store_dir, "0" * 32 + "-fake")
    code, _, err = _cli(capsysbinary, "store", "path-info", fake)
    assert code == 1 and b"not valid" in err
    code, _, err = _cli(capsysbinary, "store", "path-info", str(tmp_path))
    assert code == 1 and b"not in the store" in err
