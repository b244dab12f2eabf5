"""The sandbox fork server: supervisors are runner's children, and nothing outlives runner.

docs/sandbox.md ("How it is built", "Lifetime") is the contract.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox import executor, forkserver, make_plan, spawn
from runner.sandbox.plan import default_ids
from runner.settings import Settings
from tests import sandbox_harness

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only"),
    pytest.mark.skipif(not forkserver.supported(), reason="no clone number for this machine"),
]


def _plan(tmp_path: Path, script: str = "echo x > $out") -> Any:
    store, build = tmp_path / "store", tmp_path / "build"
    store.mkdir(exist_ok=True)
    build.mkdir(exist_ok=True)
    out = f"{store}/{sandbox_harness.FAKE_HASH}-out"
    return make_plan(argv=["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin", "out": out},
                     build_dir=str(build), store_dir=str(store), closure=[], outputs=[out],
                     fixed_output=False, settings=Settings.load(environ={}), ids=default_ids())


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_until(check: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _with_marker(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and not _gone(int(entry)):
            found.append(int(entry))
    return found


def _in_thread(work: Any) -> Any:
    """Run `work()` on a fresh thread (so it gets its own fork server); its result."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def test_supervisor_is_a_child_of_the_spawning_process(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "read x; echo x > $out")
    proc = spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, fork_server=True)
    try:
        server = executor.thread_server_pid()
        assert server is not None and server != proc.pid
        assert _ppid(proc.pid) == os.getpid()
        assert _ppid(server) == os.getpid()
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_fork_server_is_replaced(tmp_path: Path) -> None:
    def twice() -> tuple[int, int, int, int]:
        first = spawn(_plan(tmp_path), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, fork_server=True)
        old = executor.thread_server_pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        assert _wait_until(lambda: _gone(old))
        # One build per output at a time (the worker's locks make it so): the two
        # would share a staging dir.
        first_status = first.wait()
        second = spawn(_plan(tmp_path), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, fork_server=True)
        new = executor.thread_server_pid()
        assert new is not None
        return first_status, second.wait(), old, new

    first, second, old, new = _in_thread(twice)
    assert (first, second) == (0, 0)
    assert old != new
    assert os.listdir(tmp_path / "store") == [f"{sandbox_harness.FAKE_HASH}-out"]


def test_build_outlives_a_killed_fork_server(tmp_path: Path) -> None:
    def build() -> int:
        r, w = os.pipe()
        proc = spawn(_plan(tmp_path, "sleep 0.5; echo x > $out; echo done"), stdout=w,
                     stderr=w, fork_server=True)
        os.close(w)
        server = executor.thread_server_pid()
        assert server is not None
        os.kill(server, signal.SIGKILL)
        status = proc.wait()
        with os.fdopen(r, "rb") as log:
            assert log.read() == b"done\n"
        return status

    assert _in_thread(build) == 0
    assert (tmp_path / "store" / f"{sandbox_harness.FAKE_HASH}-out").read_text() == "x\n"


def test_fork_server_dies_with_its_thread(tmp_path: Path) -> None:
    def one() -> int:
        assert spawn(_plan(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     fork_server=True).wait() == 0
        pid = executor.thread_server_pid()
        assert pid is not None
        return pid

    server = _in_thread(one)
    assert _wait_until(lambda: _gone(server))


_KILLED_RUNNER = textwrap.dedent("""
    import subprocess, sys, threading
    from runner.sandbox import executor, make_plan, spawn
    from runner.sandbox.plan import default_ids
    from runner.settings import Settings
    work, marker = sys.argv[1], sys.argv[2]
    plan = make_plan(argv=["/bin/sh", "-c", f"sleep 1000 {marker}; sleep 1000 {marker}"],
                     env={"PATH": "/usr/bin:/bin"}, build_dir=work + "/build",
                     store_dir=work + "/store", closure=[], outputs=[], fixed_output=False,
                     settings=Settings.load(environ={}), ids=default_ids())
    def go():
        proc = spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     fork_server=True)
        print(executor.thread_server_pid(), proc.pid, flush=True)
        threading.Event().wait()
    threading.Thread(target=go, daemon=True).start()
    threading.Event().wait()
""")


def _run_and_kill(python: str, work: Path, user: list[str], env: dict[str, str]) -> None:
    (work / "store").mkdir()
    (work / "build").mkdir()
    if user:
        for path in (work, work / "store", work / "build"):
            os.chown(path, NOBODY, NOBODY)
    marker = f"marker-{uuid.uuid4().hex}"
    runner = subprocess.Popen([*user, python, "-c", _KILLED_RUNNER, str(work), marker],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline()
        assert line, "the runner stand-in did not start its build"
        server, supervisor = (int(n) for n in line.split())
        assert server != supervisor
        assert _wait_until(lambda: bool(_with_marker(marker)))
    finally:
        runner.kill()
        runner.wait()
    assert _wait_until(lambda: _gone(server) and _gone(supervisor) and not _with_marker(marker))


def test_runner_sigkill_leaves_no_process(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    _run_and_kill(sys.executable, tmp_path, [], env)


def test_unprivileged_fork_server_builds_and_dies_with_runner() -> None:
    """uid 65534 with a Python it may run: the user namespace path through the server."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("switching to uid 65534 needs root and setpriv")
    python = "/usr/bin/python3"
    user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    check = subprocess.run([*user, python, "-c", "import sys; assert sys.version_info >= (3, 10)"],
                           capture_output=True)
    userns = subprocess.run([*user, "unshare", "--user", "true"], capture_output=True)
    if check.returncode != 0 or userns.returncode != 0:
        pytest.skip("no Python >= 3.10 or no user namespaces for uid 65534")
    work = Path(tempfile.mkdtemp(prefix="runner-forkserver-test-"))  # tmp_path is root-only
    try:
        os.chown(work, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(work)}
        script = textwrap.dedent("""
            import os, subprocess, sys
            from runner.sandbox import executor, make_plan, spawn
            from runner.sandbox.plan import default_ids
            from runner.settings import Settings
            work = sys.argv[1]
            os.makedirs(work + "/store"); os.makedirs(work + "/build")
            out = work + "/store/0123456789abcdfghijklmnpqrsvwxyz-out"
            plan = make_plan(argv=["/bin/sh", "-c", "id -u > $out"],
                             env={"PATH": "/usr/bin:/bin", "out": out},
                             build_dir=work + "/build", store_dir=work + "/store", closure=[],
                             outputs=[out], fixed_output=False,
                             settings=Settings.load(environ={}), ids=default_ids())
            proc = spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         fork_server=True)
            assert executor.thread_server_pid() is not None, executor._unavailable
            assert proc.wait() == 0
            st = os.stat(out)
            print(open(out).read().strip(), st.st_uid)
        """)
        done = subprocess.run([*user, python, "-c", script, str(work / "a")], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1000", str(NOBODY)]
        killed = work / "b"
        killed.mkdir()
        _run_and_kill(python, killed, user, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
