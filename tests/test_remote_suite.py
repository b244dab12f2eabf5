"""`runner build --remote`, one suite over every REAPI server we test against (the `remote`
fixture): tier 1, buildbox-casd running actions with buildbox-run; tier 2, BuildGrid (SQL
scheduler on PostgreSQL, a Remote Workers API bot; needs `.ci/setup-buildgrid.sh`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import buildgrid_server, remote_server
from tests.remote_builds import build_json, output_infos, wipe_store
from tests.remote_endpoints import CasdEndpoint, GridEndpoint, RemoteEndpoint, descendants

HANG = 90  # seconds: a build that has not finished by then is hanging

_TIER1 = remote_server.unavailable()
_TIER2 = buildgrid_server.unavailable()


@pytest.fixture(scope="module", params=[
    pytest.param("casd", marks=pytest.mark.skipif(
        _TIER1 is not None, reason=f"tier-1 REAPI server unavailable: {_TIER1}")),
    pytest.param("buildgrid", marks=[
        pytest.mark.slow,
        # One BuildGrid per run: with `pytest -n … --dist loadgroup` these share a worker.
        pytest.mark.xdist_group("buildgrid"),
        pytest.mark.skipif(_TIER2 is not None,
                           reason=f"tier-2 REAPI server (BuildGrid) unavailable: {_TIER2}")]),
])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteEndpoint]:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "casd":
        casd = CasdEndpoint(root)
        yield casd
        casd.stop()
    else:
        grid = buildgrid_server.start_buildgrid(root)
        print(f"BuildGrid up: {grid.timings}", file=sys.stderr)
        yield GridEndpoint(grid)
        grid.stop()


@pytest.fixture
def remote(server: RemoteEndpoint) -> RemoteEndpoint:
    """The module's server, started again if a test killed it."""
    server.ensure_up()
    return server


def _spec(tmp_path: Path, body: str, count: int, name: str = "spec.yaml", tag: str = "") -> str:
    lines = ["version: 1", "defaults: {builder: /bin/sh}", "derivations:",
             f"  base: {{args: [-c, 'echo base{tag} > $out']}}"]
    for i in range(count):
        lines.append(f"  n{i}: {{args: [-c, '{body.format(i=i)}']}}")
    spec = tmp_path / name
    spec.write_text("\n".join(lines) + "\n")
    return str(spec)


def test_remote_builds_match_a_local_build_then_come_from_the_action_cache(
        remote: RemoteEndpoint, tmp_path: Path, store_dir: str, state_dir: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """base + derivations on it: directories, files, a symlink and a reference each."""
    spec = _spec(tmp_path, "mkdir $out; cat ${{{{ base }}}} > $out/f; echo {i} >> $out/f; "
                           "ln -s ${{{{ base }}}} $out/link", remote.scale - 1)
    code, local, err = build_json(capsys, spec)
    assert code == 0, err
    expected = output_infos(store_dir, state_dir, local)
    assert len(expected) == remote.scale

    wipe_store(store_dir, state_dir)
    executed = remote.executed()
    code, first, err = build_json(capsys, "--remote", remote.url, spec)
    assert code == 0, err
    assert {r["status"] for r in first} == {"built"}, err  # run remotely, not from a cache
    assert output_infos(store_dir, state_dir, first) == expected
    if executed is not None:
        assert remote.executed() == executed + remote.scale

    wipe_store(store_dir, state_dir)
    executed = remote.executed()
    code, again, err = build_json(capsys, "--remote", remote.url, spec)
    assert code == 0, err
    assert {r["status"] for r in again} == {"substituted"}  # the remote ActionCache
    assert output_infos(store_dir, state_dir, again) == expected
    assert remote.executed() == executed  # nothing was executed again


def test_a_failing_remote_build_shows_its_log_tail_and_is_a_cached_failure(
        remote: RemoteEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nderivations:\n  bad: {builder: /bin/sh, "
                    "args: [-c, 'echo remote-out; echo remote-oops >&2; exit 3']}\n")
    code, results, err = build_json(capsys, "--remote", remote.url, str(spec))
    assert code == 100
    assert results[0]["status"] == "failed" and results[0]["exitStatus"] == 3
    assert "remote-out" in err and "remote-oops" in err
    # Like a local failure, it is cached: the second try does not ask the server.
    executed = remote.executed()
    code, results, err = build_json(capsys, "--remote", remote.url, str(spec))
    assert code == 100 and "remote-oops" in err
    assert results[0]["status"] == "cached-failure"
    assert remote.executed() == executed


def _build_and_kill(remote: RemoteEndpoint, spec: str, *options: str
                    ) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    """`runner build --remote` in a process; kill the server once it runs one of the
    spec's actions (their builders `sleep`)."""
    argv = [sys.executable, "-m", "runner", "build", "--no-out-link", "--json", "--sandbox=off",
            "--remote", remote.url, "--option", "remote-connect-timeout", "3", *options, spec]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not any("sleep 2" in c for c in descendants(remote.action_root())):
            assert proc.poll() is None, "the build ended before any remote action started"
        remote.kill()
        try:
            out, err = proc.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"runner build hung after the server was killed: {err.decode()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, json.loads(out) if out.strip() else [], err.decode()


@pytest.mark.timeout(4 * HANG)
def test_killing_the_server_mid_build_fails_clearly_or_falls_back(
        remote: RemoteEndpoint, tmp_path: Path) -> None:
    def slow(tag: str) -> str:  # fresh actions: nothing cached, no job a server could reuse
        return _spec(tmp_path, f"echo {tag}; sleep 2; echo {{i}} > $out", 4, f"{tag}.yaml", tag)

    url = remote.url
    code, results, err = _build_and_kill(remote, slow("a"), "--keep-going")
    statuses = [r["status"] for r in results]
    assert code != 0, err
    # Every derivation is accounted for: the ones in flight and the ones that had not started
    # fail as `setup-failed` (never a cached failure); only those finished before are `built`.
    assert len(statuses) == 5 and "setup-failed" in statuses, err
    assert set(statuses) <= {"built", "setup-failed"}, err
    assert f"remote executor '{url}' is unavailable" in err and "Traceback" not in err, err

    remote.ensure_up()
    code, results, err = _build_and_kill(remote, slow("b"), "--option", "remote-fallback", "true")
    assert code == 0, err
    assert {r["status"] for r in results} == {"built"}, err
    assert "building it locally" in err and "Traceback" not in err, err


@pytest.mark.skipif(_TIER1 is not None, reason=f"tier-1 REAPI server unavailable: {_TIER1}")
def test_an_unreachable_remote_fails_clearly_or_falls_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, "echo {i} > $out", 1)
    down = f"grpc://127.0.0.1:{remote_server.free_port()}"
    code, results, err = build_json(capsys, "--remote", down, "--option",
                                    "remote-connect-timeout", "2", spec)
    assert code != 0 and results[0]["status"] == "setup-failed"
    assert down in err and "Traceback" not in err
    code, results, err = build_json(capsys, "--remote", down, "--option", "remote-fallback",
                                    "true", "--option", "remote-connect-timeout", "2", spec)
    assert code == 0, err
    assert {r["status"] for r in results} == {"built"}
    assert "building it locally" in err
