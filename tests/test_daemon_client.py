"""runner's protocol client (`RemoteStore`) against Nix 2.8's own `nix-daemon` and
against `runner daemon`: the same calls, the same answers as Nix's command-line
tools give for that store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.daemon.remote_store import RemoteStore
from runner.errors import RunnerError
from runner.store import nar
from tests.daemon_harness import Daemon, NixDaemon, nix_env, run_nix
from tests.nix_oracle import needs_nix

pytestmark = needs_nix


@pytest.fixture(params=["nix-daemon", "runner-daemon"])
def socket_path(request: pytest.FixtureRequest, tmp_path: Path, store_dir: str
                ) -> Iterator[str]:
    if request.param == "nix-daemon":
        with NixDaemon(tmp_path / "nixd", store_dir) as path:
            yield path
    else:
        with Daemon(str(tmp_path / "ours" / "socket")) as d:
            yield d.socket
            assert d.stop() == 0


def test_remote_store_agrees_with_nix_tools(socket_path: str, store_dir: str,
                                            tmp_path: Path) -> None:
    env = nix_env(tmp_path, store_dir)
    uri = f"unix://{socket_path}"
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "x").write_text("x\n")
    (tree / "l").symlink_to("d/x")
    with RemoteStore(socket_path, store_dir) as store:
        src = store.add_path(str(tree), "tree")
        assert src == run_nix(env, "nix-store", "--store", uri, "--add",
                              str(tree)).stdout.strip()
        text = store.add_text("notes.txt", "refers to " + src, [src])
        assert store.is_valid(text) and not store.is_valid(f"{store_dir}/{'0' * 32}-x")
        assert store.valid_paths([src, text, f"{store_dir}/{'0' * 32}-x"]) == {src, text}
        info = store.query_path_info(text)
        assert info is not None
        nix_info = json.loads(run_nix(env, "nix", "path-info", "--store", uri, "--json",
                                      text).stdout)[0]
        assert info.nar_hash.sri() == nix_info["narHash"]
        assert (info.nar_size, sorted(info.references), info.ca) == (
            nix_info["narSize"], nix_info["references"], nix_info["ca"])
        assert store.query_referrers(src) == {text}
        requisites = run_nix(env, "nix-store", "--store", uri, "-qR", text).stdout.split()
        assert store.compute_closure([text]) == set(requisites)
        store.restore(src, str(tmp_path / "back"))
        assert nar.hash_path(str(tmp_path / "back")) == nar.hash_path(str(tree))
        store.add_temp_root(src)
        with pytest.raises(RunnerError) as e:
            store.query_references(f"{store_dir}/{'0' * 32}-x")
        assert e.value.reason == "invalid-path"
