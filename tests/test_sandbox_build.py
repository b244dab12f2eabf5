"""Real builds in real namespaces: what a sandboxed builder can and cannot do.

Every test runs twice: as the invoking user (root here: no user namespace,
build uid 30001) and, when the tests run as root, as uid 65534 through
`setpriv` (user namespace, build uid 1000). docs/sandbox.md is the contract.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError
from runner.sandbox import make_plan, slots, spawn
from runner.sandbox.plan import Mount, default_ids
from runner.settings import DEFAULT_SANDBOX_PATHS, Settings
from runner.store import trash
from tests import sandbox_harness

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only")


@dataclasses.dataclass
class Sandbox:
    run: Callable[..., dict[str, Any]]
    build_ids: tuple[int, int]  # uid, gid the builder has inside
    owner: tuple[int, int]  # uid, gid the outputs must have on the host


def _as_nobody(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


@functools.cache
def _nobody_python() -> str | None:
    for python in (sys.executable, "/usr/bin/python3"):
        check = _as_nobody(python, "-c", "import sys; assert sys.version_info >= (3, 10)")
        if check.returncode == 0:
            return python
    return None


def _unprivileged_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("switching to uid 65534 needs root; the invoking-user case covers this")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    userns = _as_nobody("unshare", "--user", "true")
    if userns.returncode != 0:
        pytest.skip(f"the kernel forbids unprivileged user namespaces: {userns.stderr.strip()}")
    python = _nobody_python()
    if python is None:
        pytest.skip("no Python >= 3.10 that uid 65534 may run")
    work = Path(tempfile.mkdtemp(prefix="runner-sandbox-test-"))  # tmp_path is root-only
    os.chown(work, NOBODY, NOBODY)

    def run(**request: Any) -> dict[str, Any]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(work)}
        done = _as_nobody(python, "-m", "tests.sandbox_harness", cwd=REPO, env=env,
                          input=json.dumps({"work": str(work / "w"), **request}))
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    yield Sandbox(run, (1000, 100), (NOBODY, NOBODY))
    shutil.rmtree(work)


@pytest.fixture(params=["invoking-user", "uid-65534", "invoking-user-python-spawn"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    """Every probe against the C spawn (the default where it is built), as root and
    rootless, and against the Python fork server it falls back to."""
    if request.param == "uid-65534":
        yield from _unprivileged_sandbox(tmp_path)
        return
    way = {"spawn": "python"} if request.param.endswith("python-spawn") else {}

    def run(**req: Any) -> dict[str, Any]:
        return sandbox_harness.run({"work": str(tmp_path / "w"), **way, **req})

    ids = (30001, 30000) if os.geteuid() == 0 else (1000, 100)
    yield Sandbox(run, ids, (os.geteuid(), os.getegid()))


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result
    assert result["returncode"] == 0, result["stderr"]
    return result


# --- what a build can do ---------------------------------------------------------------------


def test_runs_host_tools_reads_inputs_writes_outputs(sandbox: Sandbox) -> None:
    script = """
        set -e
        python3 -c 'print(6 * 7)'
        cat "$src/data" | tr a-z A-Z > "$out"
        mkdir "$doc" && cp "$src/data" "$doc/copy" && chmod 555 "$doc"
        echo scratch > /tmp/t && echo scratch > /build/b && cat /tmp/t
    """
    r = _ok(sandbox.run(script=script, closure={"src": "hello"}, outputs=["out", "doc"]))
    assert r["stdout"].split() == ["42", "scratch"]
    assert r["outputs"]["out"] == {"uid": sandbox.owner[0], "gid": sandbox.owner[1],
                                   "is_dir": False, "content": "HELLO"}
    assert r["outputs"]["doc"]["files"] == {"copy": "hello"}
    assert r["outputs"]["doc"]["uid"] == sandbox.owner[0]
    assert r["build_listing"] == ["b"]
    # Only the closure, the outputs and the path outside the closure; no staging left.
    names = [n.split("-", 1)[1] for n in r["store_listing"]]
    assert names == ["doc", "out", "secret", "src"]


def test_identity_inside(sandbox: Sandbox) -> None:
    script = "id -u; id -g; id -un; hostname; pwd; echo $$; cat /etc/hosts"
    r = _ok(sandbox.run(script=script))
    uid, gid = sandbox.build_ids
    lines = r["stdout"].splitlines()
    assert lines[:6] == [str(uid), str(gid), "nixbld", "localhost", "/build", "1"]
    assert "127.0.0.1 localhost" in lines


def test_devices_and_ptys_work(sandbox: Sandbox) -> None:
    script = """
        set -e
        echo gone > /dev/null
        head -c 16 /dev/urandom | wc -c
        head -c 4 /dev/zero | wc -c
        echo shm > /dev/shm/x && cat /dev/shm/x
        python3 -c 'import os; m, s = os.openpty(); print("pty", os.ttyname(s))'
    """
    r = _ok(sandbox.run(script=script))
    assert r["stdout"].split()[:4] == ["16", "4", "shm", "pty"]


# --- what a build cannot do ------------------------------------------------------------------


def test_cannot_read_outside_closure_and_sandbox_paths(sandbox: Sandbox) -> None:
    home_file = Path(os.environ["HOME"], "private")
    home_file.write_text("private")
    targets = [f"{REPO}/pyproject.toml", str(home_file), "/root", "/etc/shadow",
               "/etc/hostname", "/var", "/home", "/sys/kernel"]
    script = """
        ls "$NIX_STORE"
        cat "$NIX_STORE"/*-secret/data && echo LEAK secret
        for p in "$@"; do ls "$p" >/dev/null 2>&1 && echo "LEAK $p"; done
        true
    """
    r = _ok(sandbox.run(argv=["/bin/sh", "-c", script, "sh", *targets], closure={"src": "x"}))
    assert "LEAK" not in r["stdout"]
    assert r["stdout"].split()[0].endswith("-src")
    assert "secret" not in r["stdout"].split()[0:2]


def test_mount_table_is_the_plan_and_nothing_of_the_host(sandbox: Sandbox) -> None:
    r = _ok(sandbox.run(script="cat /proc/self/mountinfo", closure={"src": "x"}))
    points = [line.split()[4] for line in r["stdout"].splitlines()]
    store = r["store"]
    expected = {"/", "/tmp", "/dev", "/dev/shm", "/dev/pts", "/proc", "/build", store,
                sandbox_harness.store_path(store, "src"),
                *(f"/dev/{d}" for d in ("full", "null", "random", "tty", "urandom", "zero")),
                *(p for p in DEFAULT_SANDBOX_PATHS if os.path.isdir(p) and
                  not os.path.islink(p))}
    assert sorted(points) == sorted(expected)


def test_cannot_write_outside_outputs_build_dir_and_tmp(sandbox: Sandbox) -> None:
    script = """
        for p in /x /etc/x /usr/x /bin/x /etc/alternatives/x /dev/x /proc/x "$src/x" \
                 "$src/data"; do
            (echo pwned >> "$p") 2>/dev/null && echo "WROTE $p"
        done
        rm -rf "$src" 2>/dev/null; rm -f "$src/data" 2>/dev/null
        echo junk > "$NIX_STORE/junk"
        echo ok > /tmp/ok && echo ok > /build/ok && echo ok > "$out"
    """
    r = _ok(sandbox.run(script=script, closure={"src": "clean"}))
    assert "WROTE" not in r["stdout"]
    assert r["outputs"]["out"]["content"] == "ok\n"
    src = sandbox_harness.store_path(r["store"], "src")
    assert Path(src, "data").read_text() == "clean"
    assert os.listdir(src) == ["data"]
    assert "junk" not in r["store_listing"]


def test_cannot_see_host_processes(sandbox: Sandbox) -> None:
    marker = f"host-process-{uuid.uuid4()}"
    host = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker],
                            stdin=subprocess.PIPE)
    try:
        script = "ls /proc | grep -c '^[0-9]'; cat /proc/[0-9]*/cmdline | tr '\\0' ' '"
        r = _ok(sandbox.run(script=script))
    finally:
        host.communicate(b"")
    assert marker not in r["stdout"]
    assert int(r["stdout"].split()[0]) <= 4  # sh, ls/grep/cat of the pipeline


def test_no_network_but_loopback(sandbox: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = f"""
import socket
def attempt(what, f):
    try:
        f()
        print(what, "ok")
    except OSError as e:
        print(what, "failed", type(e).__name__)
attempt("host-loopback", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5))
attempt("resolve", lambda: socket.getaddrinfo("example.com", 80))
attempt("reach", lambda: socket.create_connection(("1.1.1.1", 53), timeout=5))
own = socket.create_server(("127.0.0.1", 0))
attempt("own-loopback", lambda: socket.create_connection(own.getsockname(), timeout=5))
attempt("localhost", lambda: socket.getaddrinfo("localhost", 80))
"""
        r = _ok(sandbox.run(argv=["/usr/bin/python3", "-c", probe]))
    lines = set(r["stdout"].splitlines())
    assert "host-loopback failed ConnectionRefusedError" in lines
    assert "resolve failed gaierror" in lines
    assert "reach ok" not in lines
    assert {"own-loopback ok", "localhost ok"} <= lines


def test_fixed_output_fetches_over_host_network(sandbox: Sandbox, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_text("fetched")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/file.txt"
        fetch = ("import os, sys, urllib.request as u; data = u.urlopen(sys.argv[2]).read();"
                 "open(os.environ[sys.argv[1]], 'wb').write(data)")
        try:
            fod = sandbox.run(argv=["/usr/bin/python3", "-c", fetch, "fod", url],
                              outputs=["fod"], fixed_output=True)
            plain = sandbox.run(argv=["/usr/bin/python3", "-c", fetch, "plain", url],
                                outputs=["plain"], fixed_output=False)
        finally:
            httpd.shutdown()
    assert _ok(fod)["outputs"]["fod"]["content"] == "fetched"
    assert plain["returncode"] != 0 and plain["outputs"]["plain"] is None
    assert "URLError" in plain["stderr"]


def test_no_process_outlives_the_build(sandbox: Sandbox) -> None:
    marker = f"daemon-{uuid.uuid4()}"
    script = f"""
        setsid python3 -c 'import time; time.sleep(600)' {marker} </dev/null >/dev/null 2>&1 &
        python3 -c 'import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(600)' {marker} </dev/null >/dev/null 2>&1
        sleep 0.2; pgrep -fc "^python3 .*{marker}"
    """
    r = _ok(sandbox.run(script=script, marker=marker))
    assert r["stdout"].split() == ["2"]  # they ran...
    assert r["survivors"] == []  # ...and were gone when the build had ended


@pytest.mark.parametrize("how", ["supervisor", "group"])
def test_killing_the_process_ends_every_build_process(sandbox: Sandbox, how: str) -> None:
    marker = f"worker-{uuid.uuid4()}"
    script = f"""
        python3 -c 'import time; time.sleep(600)' {marker} &
        setsid python3 -c 'import time; time.sleep(600)' {marker} &
        echo ready
        wait
    """
    r = sandbox.run(script=script, marker=marker, kill=how)
    assert r["first_line"] == "ready\n"
    assert r["returncode"] < 0
    assert r["survivors"] == []


def test_exit_status_and_fatal_signals_pass_through(sandbox: Sandbox) -> None:
    assert sandbox.run(script="exit 3")["returncode"] == 3
    crash = sandbox.run(argv=["/usr/bin/python3", "-c", "import ctypes; ctypes.string_at(0)"])
    assert crash["returncode"] == -11


def test_spec_sandbox_paths_only_where_allowed(sandbox: Sandbox, tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="runner-sandbox-shared-"))
    try:
        (shared / "tool").mkdir()
        (shared / "tool" / "data").write_text("tool data")
        os.chmod(shared, 0o755)
        script = "cat /opt/tool/data; (echo x > /opt/tool/new) 2>/dev/null && echo WROTE; true"
        env = {"__sandboxPaths": f"/opt/tool={shared}/tool"}
        allowed = sandbox.run(script=script, env=env,
                              settings={"allowed_spec_sandbox_paths": [str(shared)]})
        refused = sandbox.run(script=script, env=env)
    finally:
        shutil.rmtree(shared)
    assert _ok(allowed)["stdout"] == "tool data"
    assert refused["error"]["reason"] == "sandbox-path-not-allowed"


def test_missing_sandbox_paths_are_skipped(sandbox: Sandbox) -> None:
    paths = [*DEFAULT_SANDBOX_PATHS, "/nonexistent-dir", "/tmp/nonexistent=/nonexistent"]
    r = sandbox.run(script="ls / /tmp | tr '\\n' ' '", settings={"sandbox_paths": paths})
    assert "nonexistent" not in _ok(r)["stdout"]


# --- set-up errors (in-process: they are about the API, not the user) ------------------------


def _plan(tmp_path: Path, **kw: Any) -> Any:
    store, build = tmp_path / "store", tmp_path / "build"
    store.mkdir(exist_ok=True)
    build.mkdir(exist_ok=True)
    args: dict[str, Any] = dict(argv=["/bin/true"], env={"PATH": "/usr/bin:/bin"},
                                build_dir=str(build), store_dir=str(store), closure=[],
                                outputs=[f"{store}/{sandbox_harness.FAKE_HASH}-out"],
                                fixed_output=False, settings=Settings.load(environ={}),
                                ids=default_ids())
    return make_plan(**{**args, **kw})


def test_missing_closure_path_is_a_setup_error(tmp_path: Path) -> None:
    plan = _plan(tmp_path, closure=[f"{tmp_path}/store/{sandbox_harness.FAKE_HASH}-gone"])
    with pytest.raises(RunnerError) as e:
        spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert e.value.reason == "sandbox-setup"
    assert os.listdir(tmp_path / "store") == []


@pytest.mark.parametrize("then", ["deleted", "a file now"])
def test_an_input_gone_or_changed_since_an_earlier_build_is_a_setup_error(
        tmp_path: Path, then: str) -> None:
    """Each input's type is looked at once per process (executor._inputs): a path that
    went away or came back as another type fails the next build's set-up, cleanly."""
    gone = tmp_path / "store" / f"{sandbox_harness.FAKE_HASH}-input"
    (tmp_path / "store").mkdir()
    gone.mkdir()
    argv = ["/bin/sh", "-c", f"test -d {gone} && echo ok > $out"]
    out = f"{tmp_path}/store/{sandbox_harness.FAKE_HASH}-out"
    first = spawn(_plan(tmp_path, argv=argv, closure=[str(gone)], env={"out": out}),
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert first.wait() == 0  # the control: it builds while the input is there
    os.unlink(out)
    gone.rmdir()
    if then == "a file now":
        gone.write_text("x")
    with pytest.raises(RunnerError) as e:
        spawn(_plan(tmp_path, argv=argv, closure=[str(gone)], env={"out": out}),
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert e.value.reason == "sandbox-setup"
    assert not os.path.exists(out)


def test_failure_inside_the_new_namespaces_is_a_setup_error(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    broken = dataclasses.replace(plan, mounts=(*plan.mounts, Mount("file", "/usr/x", data="x")))
    with pytest.raises(RunnerError) as e:
        spawn(broken, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert e.value.reason == "sandbox-setup"
    assert "/usr/x" in e.value.message
    assert os.listdir(tmp_path / "store") == []


def test_builder_that_cannot_be_executed_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn(_plan(tmp_path, argv=["/no/such/builder"]), stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)


def test_no_mount_is_left_on_the_host(tmp_path: Path) -> None:
    # Only our paths: other processes on this host may mount things meanwhile.
    def ours() -> list[str]:
        return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(tmp_path) in line or "/tmp " in line]

    before = ours()
    proc = spawn(_plan(tmp_path, argv=["/bin/sh", "-c", "echo x > $out"],
                       env={"out": f"{tmp_path}/store/{sandbox_harness.FAKE_HASH}-out"}),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait() == 0
    assert ours() == before
    slots.release()  # as the worker does before a run ends
    trash.drain()  # the staging dir is set aside at once, removed by a thread
    assert os.listdir(tmp_path / "store") == [f"{sandbox_harness.FAKE_HASH}-out"]
