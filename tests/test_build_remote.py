"""`runner build --remote`: the worker sends builds to a REAPI endpoint (buildbox-casd)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store.canonicalise import remove_tree
from runner.store.local_store import LocalStore
from tests.remote_server import Casd, free_port, start_casd, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None,
                                reason=f"tier-1 REAPI server unavailable: {unavailable()}")


@pytest.fixture(scope="module")
def casd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Casd]:
    server = start_casd(tmp_path_factory.mktemp("casd"), tcp=True)
    yield server
    server.stop()


def _spec(tmp_path: Path, count: int = 12) -> str:
    lines = ["version: 1", "defaults: {builder: /bin/sh}", "derivations:",
             "  base: {args: [-c, 'echo base > $out']}"]
    for i in range(count):
        lines.append(f"  n{i}: {{args: [-c, 'mkdir $out; cat ${{{{ base }}}} > $out/f; "
                     f"echo {i} >> $out/f; ln -s ${{{{ base }}}} $out/link']}}")
    spec = tmp_path / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return str(spec)


def _build(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    code = run(["build", "--no-out-link", "--json", "--sandbox=off", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else [], err


def _infos(store_dir: str, state_dir: str, results: list[dict]) -> dict[str, tuple]:  # type: ignore[type-arg]
    with LocalStore(store_dir, state_dir) as store:
        found = {}
        for r in results:
            for path in r["outputs"].values():
                info = store.query_path_info(path)
                assert info is not None, path
                found[path] = (info.nar_hash, info.references)
        return found


def _wipe(store_dir: str, state_dir: str) -> None:
    for top in (store_dir, state_dir):
        remove_tree(top)
        os.makedirs(top)


def test_remote_build_matches_local_and_comes_back_from_the_action_cache(
        casd: Casd, tmp_path: Path, store_dir: str, state_dir: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    code, local, err = _build(capsys, spec)
    assert code == 0, err
    expected = _infos(store_dir, state_dir, local)
    _wipe(store_dir, state_dir)
    code, remote, err = _build(capsys, "--remote", casd.url, spec)
    assert code == 0, err
    assert {r["status"] for r in remote} <= {"built", "substituted"}
    assert _infos(store_dir, state_dir, remote) == expected
    _wipe(store_dir, state_dir)
    code, again, err = _build(capsys, "--remote", casd.url, spec)
    assert code == 0, err
    assert {r["status"] for r in again} == {"substituted"}  # the remote ActionCache
    assert _infos(store_dir, state_dir, again) == expected


def test_a_failing_remote_build_shows_its_log_tail(casd: Casd, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nderivations:\n  bad: {builder: /bin/sh, "
                    "args: [-c, 'echo remote-oops; exit 3']}\n")
    code, results, err = _build(capsys, "--remote", casd.url, str(spec))
    assert code == 100
    assert results[0]["status"] == "failed" and results[0]["exitStatus"] == 3
    assert "remote-oops" in err


def test_an_unreachable_remote_fails_clearly_or_falls_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, count=1)
    down = f"grpc://127.0.0.1:{free_port()}"
    code, results, err = _build(capsys, "--remote", down, "--option",
                                "remote-connect-timeout", "2", spec)
    assert code != 0 and results[0]["status"] == "setup-failed"
    assert down in err and "Traceback" not in err
    code, results, err = _build(capsys, "--remote", down, "--option", "remote-fallback",
                                "true", "--option", "remote-connect-timeout", "2", spec)
    assert code == 0, err
    assert {r["status"] for r in results} == {"built"}
    assert "building it locally" in err
