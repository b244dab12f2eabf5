"""Network namespaces made ahead of need (runner/sandbox/netns.py): one per build, never shared.

As root the fork server holds the next build's network namespace before the
build asks; rootless each builder makes its own. Either way every build
that has a private network is alone in it: not in the host's, not in any
other build's. The control: a fixed-output build shares the host's network,
and the same probe says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sandbox_build import Sandbox, sandbox  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only")

PROBE = 'readlink /proc/self/ns/net; echo ok > "$out"'


def _netns(sandbox: Sandbox, fixed_output: bool = False) -> str:  # noqa: F811
    r = sandbox.run(script=PROBE, fixed_output=fixed_output)
    assert r["returncode"] == 0, r
    line: str = r["stdout"].split()[0]
    assert line.startswith("net:["), r
    return line


def test_no_build_is_in_the_hosts_network(sandbox: Sandbox) -> None:  # noqa: F811
    host = os.readlink("/proc/self/ns/net")
    assert host not in {_netns(sandbox) for _ in range(3)}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's fork server makes them ahead")
def test_overlapping_builds_are_in_different_networks(tmp_path: Path) -> None:
    """A build still running and the next one (given the namespace made meanwhile)
    are in different networks: a listener of the first is not reachable from the second."""
    from runner.sandbox import make_plan, spawn
    from runner.sandbox.plan import default_ids
    from runner.settings import Settings
    from tests import sandbox_harness

    store, build = tmp_path / "a" / "store", tmp_path / "a" / "build"
    store.mkdir(parents=True)
    build.mkdir()
    os.mkfifo(build / "go")
    out = sandbox_harness.store_path(str(store), "out")
    hold = """readlink /proc/self/ns/net
        exec python3 -c 'import socket, sys
s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True)
open("/build/go").read()'"""
    plan = make_plan(argv=["/bin/sh", "-c", hold], env={"PATH": "/usr/bin:/bin", "out": out},
                     build_dir=str(build), store_dir=str(store), closure=[], outputs=[out],
                     fixed_output=False, settings=Settings.load(environ={}), ids=default_ids())
    a = spawn(plan, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert a.stdout is not None
        a_net = a.stdout.readline().decode().strip()
        port = int(a.stdout.readline())
        connect = (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5);"
                   "print('REACHED')")
        b = sandbox_harness.run({"work": str(tmp_path / "b"),
                                 "script": f"readlink /proc/self/ns/net; python3 -c \"{connect}\""
                                           " 2>/dev/null; echo ok > $out"})
    finally:
        with open(build / "go", "w") as go:
            go.write("done")
        a.wait()
    assert a.returncode == 0
    b_lines = b["stdout"].split()
    assert a_net.startswith("net:[") and b_lines[0].startswith("net:[")
    assert "REACHED" not in b_lines  # (a shared namespace: REACHED, checked by sabotage)
    assert b_lines[0] != a_net


def test_the_probe_sees_a_shared_network(sandbox: Sandbox) -> None:  # noqa: F811
    """Control: a fixed-output build is in the host's network namespace (by design)."""
    assert _netns(sandbox, fixed_output=True) == os.readlink("/proc/self/ns/net")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's fork server makes them ahead")
def test_the_fork_server_holds_the_next_builds_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, after a build the server holds one fresh network namespace, no other."""
    from runner.sandbox.executor import thread_server_pid
    from runner.sandbox.native import SPAWN_ENV
    from tests import sandbox_harness

    monkeypatch.setenv(SPAWN_ENV, "python")  # the fork server's way, not the C spawn's
    r = sandbox_harness.run({"work": str(tmp_path / "w"), "script": PROBE})
    assert r["returncode"] == 0, r
    pid = thread_server_pid()
    assert pid is not None
    own = os.readlink(f"/proc/{pid}/ns/net")
    assert own == os.readlink("/proc/self/ns/net")  # the server went back home
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("net:[")}
    assert len(held - {own}) == 1  # the next build's
    assert r["stdout"].split()[0] not in held  # the build's own was let go


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes them ahead")
def test_the_c_spawn_thread_holds_the_next_builds_network(tmp_path: Path) -> None:
    """With the C spawn the spawning thread makes the next build's network namespace
    after each build's exec: not the host's, not the one the build just got, and
    consumed by the next build (which then gets exactly it)."""
    from runner.sandbox import native
    from runner.sandbox.executor import thread_spare_network
    from tests import sandbox_harness

    if not native.built():
        pytest.skip("the C spawn is not built here")
    first = sandbox_harness.run({"work": str(tmp_path / "a"), "script": PROBE})
    assert first["returncode"] == 0, first
    spare = thread_spare_network()
    assert spare >= 0
    held = os.readlink(f"/proc/self/fd/{spare}")
    assert held != os.readlink("/proc/thread-self/ns/net")  # the thread went back home
    assert held != first["stdout"].split()[0]  # not the one the first build was given
    second = sandbox_harness.run({"work": str(tmp_path / "b"), "script": PROBE})
    assert second["stdout"].split()[0] == held  # the next build got it, and only it
    assert os.readlink(f"/proc/self/fd/{thread_spare_network()}") != held  # a new spare
