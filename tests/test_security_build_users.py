"""Class 2: concurrent builds never share a uid, so one build cannot take another's
descriptors (pidfd_getfd) or otherwise trace it (docs/security.md).

Two real `runner build` runs, with separate stores, run at the same time as root;
each builder reports its uid through a FIFO on the host and waits on another.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from runner.sandbox import probe as sandbox_probe
from runner.sandbox import uidpool
from tests.security_env import REPO, as_ids

pytestmark = pytest.mark.skipif(sys.platform != "linux" or sandbox_probe() is not None
                                or os.geteuid() != 0,
                                reason="build users need root and a working sandbox")

SPEC = """version: 1
derivations:
  slot-{x}:
    builder: /bin/sh
    args: ["-c", "id -u > /shared/uid-{x}; read line < /shared/go-{x}; echo ok > $out"]
    sandbox-paths: ["/shared={shared}"]
"""

# As another build's uid: take the builder's stdout with pidfd_getfd.
STEAL = """
import ctypes, os, sys
pidfd = os.pidfd_open(int(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(438, pidfd, 1, 0)
if fd < 0:
    sys.exit("denied: " + os.strerror(ctypes.get_errno()))
print("took", os.readlink("/proc/self/fd/%d" % fd))
"""


def _read_fifo(path: Path, run: subprocess.Popen[str]) -> str:
    """What the builder writes into the FIFO `path`; fails if its run ends first."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # no writer yet: select waits for one
    try:
        data = b""
        while not data.endswith(b"\n"):
            if not select.select([fd], [], [], 1)[0]:
                assert run.poll() is None, run.communicate()
                continue
            chunk = os.read(fd, 100)
            if not chunk:  # the writer left without a line: its run is ending
                assert run.wait(timeout=120) is None, run.communicate()
            data += chunk
        return data.decode()
    finally:
        os.close(fd)


def _builder_pid(uid: int, marker: str) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            if marker.encode() in Path("/proc", entry, "cmdline").read_bytes():
                return int(entry)
        except OSError:
            continue
    raise AssertionError(f"no builder process of uid {uid} with {marker!r}")


def _steal(uid: int, pid: int) -> subprocess.CompletedProcess[str]:
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return as_ids(uid, uidpool.GID, python, "-I", "-c", STEAL, str(pid))


@pytest.mark.slow
def test_concurrent_runs_get_distinct_build_users(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    runs = {}
    for x in ("a", "b"):
        for fifo in (f"uid-{x}", f"go-{x}"):
            os.mkfifo(shared / fifo, 0o666)
        os.chmod(shared / f"uid-{x}", 0o666)  # whatever the umask
        os.chmod(shared / f"go-{x}", 0o666)
        (tmp_path / x).mkdir()
        spec = tmp_path / x / "spec.yaml"
        spec.write_text(SPEC.format(x=x, shared=shared))
        env = {**os.environ, "RUNNER_STORE_DIR": str(tmp_path / x / "store"),
               "RUNNER_STATE_DIR": str(tmp_path / x / "state")}
        runs[x] = subprocess.Popen(
            [sys.executable, "-m", "runner", "build", "--no-out-link", "--sandbox=on",
             "--option", "allowed-spec-sandbox-paths", str(shared), str(spec)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        uids = {x: int(_read_fifo(shared / f"uid-{x}", runs[x])) for x in runs}
        assert uids["a"] != uids["b"], uids
        for uid in uids.values():
            assert uidpool.FIRST_UID <= uid < uidpool.FIRST_UID + uidpool.COUNT
        pid_b = _builder_pid(uids["b"], "go-b")
        denied = _steal(uids["a"], pid_b)
        assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied
        # Control: the probe works when the uid is shared (as every build's was).
        took = _steal(uids["b"], pid_b)
        assert took.returncode == 0 and "took pipe:" in took.stdout, took.stderr
    finally:
        for x in runs:
            with open(shared / f"go-{x}", "w") as f:
                f.write("go\n")
        for x, proc in runs.items():
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (x, err)


def test_the_pool_hands_out_each_uid_once() -> None:
    leases = [uidpool.acquire() for _ in range(3)]
    try:
        assert len({lease.uid for lease in leases}) == 3
        freed = leases.pop()
        freed.release()
        again = uidpool.acquire()  # only a released uid comes back, maybe this one
        leases.append(again)
        assert again.uid not in {lease.uid for lease in leases[:-1]}
    finally:
        for lease in leases:
            lease.release()
