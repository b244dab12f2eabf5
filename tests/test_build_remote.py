"""`runner build --remote`: the worker sends builds to a REAPI endpoint (buildbox-casd)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote_builds import build_json, output_infos, wipe_store
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


def test_remote_build_matches_local_and_comes_back_from_the_action_cache(
        casd: Casd, tmp_path: Path, store_dir: str, state_dir: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    code, local, err = build_json(capsys, spec)
    assert code == 0, err
    expected = output_infos(store_dir, state_dir, local)
    wipe_store(store_dir, state_dir)
    code, remote, err = build_json(capsys, "--remote", casd.url, spec)
    assert code == 0, err
    assert {r["status"] for r in remote} <= {"built", "substituted"}
    assert output_infos(store_dir, state_dir, remote) == expected
    wipe_store(store_dir, state_dir)
    code, again, err = build_json(capsys, "--remote", casd.url, spec)
    assert code == 0, err
    assert {r["status"] for r in again} == {"substituted"}  # the remote ActionCache
    assert output_infos(store_dir, state_dir, again) == expected


def test_a_failing_remote_build_shows_its_log_tail(casd: Casd, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nderivations:\n  bad: {builder: /bin/sh, "
                    "args: [-c, 'echo remote-oops; exit 3']}\n")
    code, results, err = build_json(capsys, "--remote", casd.url, str(spec))
    assert code == 100
    assert results[0]["status"] == "failed" and results[0]["exitStatus"] == 3
    assert "remote-oops" in err


def test_an_unreachable_remote_fails_clearly_or_falls_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, count=1)
    down = f"grpc://127.0.0.1:{free_port()}"
    code, results, err = build_json(capsys, "--remote", down, "--option",
                                "remote-connect-timeout", "2", spec)
    assert code != 0 and results[0]["status"] == "setup-failed"
    assert down in err and "Traceback" not in err
    code, results, err = build_json(capsys, "--remote", down, "--option", "remote-fallback",
                                "true", "--option", "remote-connect-timeout", "2", spec)
    assert code == 0, err
    assert {r["status"] for r in results} == {"built"}
    assert "building it locally" in err
