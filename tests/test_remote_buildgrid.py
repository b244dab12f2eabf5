"""Tier 2: `runner build --remote` against BuildGrid (SQL scheduler on PostgreSQL, a Remote
Workers API bot running actions through buildbox-run). Needs `.ci/setup-buildgrid.sh`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buildgrid_server import BuildGrid, start_buildgrid, unavailable
from tests.remote_builds import build_json, output_infos, wipe_store

pytestmark = [
    pytest.mark.slow,
    # One BuildGrid per run: with `pytest -n … --dist loadgroup` these tests share a worker.
    pytest.mark.xdist_group("buildgrid"),
    pytest.mark.skipif(unavailable() is not None,
                       reason=f"tier-2 REAPI server (BuildGrid) unavailable: {unavailable()}"),
]

DERIVATIONS = 50
HANG = 90  # seconds: a build that has not finished by then is hanging


@pytest.fixture(scope="module")
def buildgrid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildGrid]:
    grid = start_buildgrid(tmp_path_factory.mktemp("buildgrid"))
    print(f"BuildGrid up: {grid.timings}", file=sys.stderr)
    yield grid
    grid.stop()


@pytest.fixture
def grid(buildgrid_server: BuildGrid) -> BuildGrid:
    """The module's BuildGrid, its server restarted if a test killed it."""
    if buildgrid_server.server is None or buildgrid_server.server.poll() is not None:
        buildgrid_server.start_server()
    return buildgrid_server


def _spec(tmp_path: Path, body: str, count: int, name: str = "spec.yaml", tag: str = "") -> str:
    lines = ["version: 1", "defaults: {builder: /bin/sh}", "derivations:",
             f"  base: {{args: [-c, 'echo base{tag} > $out']}}"]
    for i in range(count):
        lines.append(f"  n{i}: {{args: [-c, '{body.format(i=i)}']}}")
    spec = tmp_path / name
    spec.write_text("\n".join(lines) + "\n")
    return str(spec)


def _fifty(tmp_path: Path) -> str:
    """base + 49 derivations on it: directories, files, a symlink and a reference each."""
    return _spec(tmp_path, "mkdir $out; cat ${{{{ base }}}} > $out/f; echo {i} >> $out/f; "
                           "ln -s ${{{{ base }}}} $out/link", DERIVATIONS - 1)


def test_fifty_derivations_match_a_local_build_then_come_from_the_action_cache(
        grid: BuildGrid, tmp_path: Path, store_dir: str, state_dir: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = _fifty(tmp_path)
    code, local, err = build_json(capsys, spec)
    assert code == 0, err
    expected = output_infos(store_dir, state_dir, local)
    assert len(expected) == DERIVATIONS

    wipe_store(store_dir, state_dir)
    jobs = grid.jobs()
    start = time.monotonic()
    code, remote, err = build_json(capsys, "--remote", grid.url, spec)
    executed = time.monotonic() - start
    assert code == 0, err
    assert {r["status"] for r in remote} == {"built"}
    assert output_infos(store_dir, state_dir, remote) == expected
    assert grid.jobs() == jobs + DERIVATIONS

    wipe_store(store_dir, state_dir)
    start = time.monotonic()
    code, again, err = build_json(capsys, "--remote", grid.url, spec)
    cached = time.monotonic() - start
    assert code == 0, err
    assert {r["status"] for r in again} == {"substituted"}  # BuildGrid's ActionCache
    assert output_infos(store_dir, state_dir, again) == expected
    assert grid.jobs() == jobs + DERIVATIONS  # nothing was executed again
    print(f"{DERIVATIONS} derivations: executed {executed:.1f} s, "
          f"from the ActionCache {cached:.1f} s", file=sys.stderr)


def test_a_failing_remote_build_shows_its_log_tail(grid: BuildGrid, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nderivations:\n  bad: {builder: /bin/sh, "
                    "args: [-c, 'echo tier2-out; echo tier2-oops >&2; exit 3']}\n")
    code, results, err = build_json(capsys, "--remote", grid.url, str(spec))
    assert code == 100
    assert results[0]["status"] == "failed" and results[0]["exitStatus"] == 3
    assert "tier2-out" in err and "tier2-oops" in err
    # Like a local failure, it is a cached failure: the second try does not ask the server.
    jobs = grid.jobs()
    code, results, err = build_json(capsys, "--remote", grid.url, str(spec))
    assert code == 100 and "tier2-oops" in err
    assert grid.jobs() == jobs


def _build_and_kill(grid: BuildGrid, spec: str, *options: str) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    """`runner build --remote` in a process; kill `bgd server` once the bot runs an action
    (`base` and a first slow derivation have reached the scheduler)."""
    argv = [sys.executable, "-m", "runner", "build", "--no-out-link", "--json", "--sandbox=off",
            "--remote", grid.url, "--option", "remote-connect-timeout", "3", *options, spec]
    jobs = grid.jobs()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while grid.jobs() < jobs + 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before any remote action started"
        time.sleep(0.3)  # the bot has its lease and buildbox-run is running the action
        grid.kill_server()
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


def test_killing_the_server_mid_build_fails_clearly_or_falls_back(
        grid: BuildGrid, tmp_path: Path) -> None:
    def slow(tag: str) -> str:  # fresh actions: nothing cached, no job BuildGrid could reuse
        return _spec(tmp_path, f"echo {tag}; sleep 2; echo {{i}} > $out", 4, f"{tag}.yaml", tag)

    code, results, err = _build_and_kill(grid, slow("a"), "--keep-going")
    statuses = [r["status"] for r in results]
    assert code != 0, err
    # Every derivation is accounted for: the ones in flight and the ones that had not started
    # fail as `setup-failed` (never a cached failure); only those finished before are `built`.
    assert len(statuses) == 5 and "setup-failed" in statuses, err
    assert set(statuses) <= {"built", "setup-failed"}, err
    assert f"remote executor '{grid.url}' is unavailable" in err and "Traceback" not in err, err

    grid.start_server()
    code, results, err = _build_and_kill(grid, slow("b"), "--option", "remote-fallback", "true")
    assert code == 0, err
    assert {r["status"] for r in results} == {"built"}, err
    assert "building it locally" in err and "Traceback" not in err, err
