"""Derivations as Nix 2.8 writes them (bytes that are not UTF-8 in `env`, structured
attrs, dot names), written by Nix's clients through `runner daemon`: the same paths as
in a Nix store, readable by runner (queries, `runner store path-info`, a build)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store import derivation
from runner.store.local_store import LocalStore
from tests.daemon_harness import Daemon, nix_env, nix_local_store, run_nix
from tests.nix_oracle import needs_nix

pytestmark = needs_nix

# A Nix string literal holding Latin-1 bytes (Nix strings are bytes, so are its .drv).
LATIN1 = b'chars = "\xc5\xc4\xd6";'
EXPRS = {
    "latin1": b'derivation { name = "latin1"; system = builtins.currentSystem; '
              b'builder = "/bin/sh"; args = ["-c" "printf %s \\"$chars\\" > $out"]; '
              + LATIN1 + b" }",
    "latin1-file": b'derivation { name = "latin1-file"; system = builtins.currentSystem; '
                   b'builder = "/bin/sh"; args = ["-c" "cat $charsPath > $out"]; '
                   b'passAsFile = ["chars"]; ' + LATIN1 + b" }",
    # Read and queried; not built (runner's builder does not write `.attrs.*`).
    "structured": b'derivation { name = "structured"; system = builtins.currentSystem; '
                  b'__structuredAttrs = true; builder = "/bin/sh"; args = []; }',
    "dot-name": b'derivation { name = ".gitignore"; system = builtins.currentSystem; '
                b'builder = "/bin/sh"; args = ["-c" "echo hi > $out"]; }',
}


@pytest.fixture
def daemon(tmp_path: Path, store_dir: str) -> Iterator[Daemon]:
    with Daemon(str(tmp_path / "sock" / "socket")) as d:
        yield d
        assert d.stop() == 0


@pytest.mark.parametrize("kind", sorted(EXPRS))
def test_nix_instantiate_through_the_daemon(kind: str, tmp_path: Path, store_dir: str,
                                            state_dir: str, daemon: Daemon,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    env = nix_env(tmp_path, store_dir)
    (tmp_path / "e.nix").write_bytes(EXPRS[kind])
    ours = f"unix://{daemon.socket}"
    drv = run_nix(env, "nix-instantiate", "--store", ours, str(tmp_path / "e.nix")).stdout.strip()
    nix_store = nix_local_store(tmp_path, store_dir)
    assert run_nix(env, "nix-instantiate", "--store", nix_store,
                   str(tmp_path / "e.nix")).stdout.strip() == drv
    # runner reads the bytes Nix wrote: same drv path, same output paths.
    with LocalStore(store_dir, state_dir) as store:
        parsed = store.read_derivation(drv)
    data = Path(drv).read_bytes()
    assert parsed.data == data
    assert derivation.derivation_path(parsed, store_dir) == drv
    filled = derivation.fill_output_paths(parsed, store_dir, lambda p: LocalStore(
        store_dir, state_dir).read_derivation(p), {})
    assert filled.outputs == parsed.outputs
    if kind.startswith("latin1"):
        assert derivation.encode(parsed.env["chars"]) == b"\xc5\xc4\xd6"
    # The daemon answers Nix's queries about it as a Nix store does.
    for query in (["--query", "--outputs", drv], ["--query", "--references", drv]):
        a = run_nix(env, "nix-store", "--store", ours, *query).stdout
        b = run_nix(env, "nix-store", "--store", nix_store, *query).stdout
        assert a == b
    out = run_nix(env, "nix-store", "--store", ours, "--query", "--outputs", drv).stdout.strip()
    assert out == parsed.outputs["out"].path
    # runner's own client, through the daemon.
    assert run(["store", "path-info", "--store", ours, "--json", drv]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [i["path"] for i in info] == [drv]
    if kind == "structured":
        return  # built and compared with Nix's own build in test_structured_attrs_nix.py
    # The daemon builds it; the builder sees the env bytes as written.
    built = run_nix(env, "nix-store", "--store", ours, "--realise", drv).stdout.strip()
    assert built == out
    if kind.startswith("latin1"):
        assert Path(out).read_bytes() == b"\xc5\xc4\xd6"
