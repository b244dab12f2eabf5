"""Local builds next to remote ones stay sandboxed, and a dead endpoint costs one deadline.

gRPC's threads and fork handlers break a sandbox set up by a fork of runner
(issue 15: the probe failed with `pthread_create failed`, and runner built as
host root). Each test runs `runner build` as its own process, so the probe's
per-process answer cannot come from an earlier test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.remote_endpoints import descendants
from tests.remote_server import start_casd, unavailable

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(unavailable() is not None,
                                 reason=f"tier-1 REAPI server unavailable: {unavailable()}")]

# Long enough that waiting out any deadline would show in the run's time.
DEADLINE = 30


def _sandbox_works() -> str | None:
    from runner.sandbox.availability import probe

    return probe()


def _spec(tmp_path: Path, body: str) -> tuple[str, Path]:
    """`body` may use HOST: a directory of this machine that no sandbox shows."""
    host = tmp_path / "host-only"
    host.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\ndefaults: {builder: /bin/sh}\nderivations:\n"
                    + body.replace("HOST", str(host)))
    return str(spec), host


# What a build records about where it ran: whether it saw the host, and its uid.
PROBE = "if [ -d HOST ]; then echo host-visible; else echo hidden; fi > $out; id -u >> $out"


def _runner(url: str, spec: str, *options: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "runner", "build", "--no-out-link", "--json",
            "--sandbox=on", "--option", "sandbox-fallback", "false", "--remote", url,
            "--option", "remote-timeout", str(DEADLINE), *options, spec]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    out, err = proc.communicate(timeout=120)
    return proc.returncode, json.loads(out) if out.strip() else [], err.decode()


def _sandboxed(output: str) -> bool:
    seen, uid = Path(output).read_text().split()[:2]
    return seen == "hidden" and uid != "0"


def test_control_an_unsandboxed_build_sees_the_host(tmp_path: Path) -> None:
    """The probe can tell: without the sandbox the build sees HOST (as root here)."""
    spec, _ = _spec(tmp_path, f"  d: {{args: [-c, '{PROBE}']}}\n")
    out = subprocess.run([sys.executable, "-m", "runner", "build", "--no-out-link",
                          "--sandbox=off", spec], capture_output=True, check=True).stdout
    assert not _sandboxed(out.decode().strip())


def test_server_killed_mid_run_every_action_falls_back_sandboxed(tmp_path: Path) -> None:
    assert _sandbox_works() is None
    server = start_casd(tmp_path / "casd", tcp=True)
    body = "".join(f"  d{i}: {{args: [-c, '{PROBE}; sleep 0.5; echo {i} >> $out']}}\n"
                   for i in range(6))
    spec, _ = _spec(tmp_path, body)
    try:
        start = time.monotonic()
        proc = _runner(server.url, spec, "--option", "remote-fallback", "true",
                       "--option", "remote-connect-timeout", str(DEADLINE))
        # Kill the server once it runs one of our actions (bounded by the test timeout).
        while not any("sleep" in c for c in descendants(server.proc.pid)):
            assert proc.poll() is None, proc.communicate()
        server.kill_all()
        code, results, err = _finish(proc)
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    assert code == 0, err
    assert len(results) == 6 and {r["status"] for r in results} == {"built"}, err
    assert all(_sandboxed(r["outputs"]["out"]) for r in results), err
    assert "building without a sandbox" not in err and "pthread_create" not in err, err
    # The actions fell back, and none waited for a deadline.
    assert "building it locally" in err, err
    assert elapsed < DEADLINE, err


def test_an_unanswering_endpoint_costs_one_deadline(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the first action waits out
    `remote-connect-timeout`, every other one falls back at once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads
        url = f"grpc://127.0.0.1:{silent.getsockname()[1]}"
        body = "".join(f"  d{i}: {{args: [-c, '{PROBE}; echo {i} >> $out']}}\n"
                       for i in range(6))
        spec, _ = _spec(tmp_path, body)
        code, results, err = _finish(_runner(url, spec, "--option", "remote-fallback", "true",
                                             "--option", "remote-connect-timeout", "2"))
    assert code == 0, err
    assert len(results) == 6 and {r["status"] for r in results} == {"built"}, err
    assert all(_sandboxed(r["outputs"]["out"]) for r in results), err
    assert err.count("DEADLINE_EXCEEDED") == 1, err
    assert err.count("is down for this run") == 5, err


def test_without_fallback_a_dead_endpoint_fails_every_action_at_once(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"grpc://127.0.0.1:{silent.getsockname()[1]}"
        body = "".join(f"  d{i}: {{args: [-c, 'echo {i} > $out']}}\n" for i in range(4))
        spec, _ = _spec(tmp_path, body)
        code, results, err = _finish(_runner(url, spec, "--keep-going", "--option",
                                             "remote-connect-timeout", "2"))
    assert code == 1, err
    assert [r["status"] for r in results] == ["setup-failed"] * 4, err
    assert err.count("DEADLINE_EXCEEDED") == 1, err


def test_a_local_build_next_to_remote_ones_is_sandboxed(tmp_path: Path) -> None:
    """`prefer-local-build` runs here, after the remote client has started its threads."""
    assert _sandbox_works() is None
    server = start_casd(tmp_path / "casd", tcp=True)
    spec, _ = _spec(tmp_path, (
        "  r0: {args: [-c, 'echo remote0 > $out']}\n"
        "  r1: {args: [-c, 'echo remote1 > $out']}\n"
        f"  here: {{prefer-local-build: true, args: [-c, '{PROBE}; cat ${{{{ r0 }}}} "
        "${{ r1 }} >> $out']}\n"))
    try:
        code, results, err = _finish(_runner(server.url, spec))
    finally:
        server.stop()
    assert code == 0, err
    by_name = {r["drvPath"].rsplit("-", 1)[1]: r for r in results}
    assert {n: r["status"] for n, r in by_name.items()} == {
        "r0.drv": "built", "r1.drv": "built", "here.drv": "built"}, err
    local = by_name["here.drv"]["outputs"]["out"]
    assert _sandboxed(local), Path(local).read_text() + err
    assert Path(local).read_text().split()[2:] == ["remote0", "remote1"]
    assert "building without a sandbox" not in err, err
    assert os.path.exists(local)


def test_without_the_fork_server_a_local_build_next_to_remote_ones_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNNER_SANDBOX_FORK_SERVER=0 without the C spawn (RUNNER_SANDBOX_SPAWN=python)
    forks the sandbox from runner, which gRPC's threads break: a clear error at once,
    never an unsandboxed build (nor a hang)."""
    server = start_casd(tmp_path / "casd", tcp=True)
    spec, _ = _spec(tmp_path, (
        "  r0: {args: [-c, 'echo remote0 > $out']}\n"
        f"  here: {{prefer-local-build: true, args: [-c, '{PROBE}; "
        "cat ${{ r0 }} >> $out']}\n"))
    monkeypatch.setenv("RUNNER_SANDBOX_FORK_SERVER", "0")
    monkeypatch.setenv("RUNNER_SANDBOX_SPAWN", "python")
    try:
        code, results, err = _finish(_runner(server.url, spec))
    finally:
        server.stop()
    assert code == 1, err
    by_name = {r["drvPath"].rsplit("-", 1)[1]: r["status"] for r in results}
    assert by_name == {"r0.drv": "built", "here.drv": "setup-failed"}, err
    assert "needs the sandbox's C spawn or its fork server" in err, err
    assert "pthread_create" not in err, err
