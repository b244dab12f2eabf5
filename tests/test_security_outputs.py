"""Class 1 (CVE-2024-27297): a descriptor a builder leaked must not change its registered
output, and fixed-output builds must not reach abstract Unix sockets (docs/security.md)."""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox import probe as sandbox_probe
from tests import security_env
from tests.security_env import User, release, start

pytestmark = pytest.mark.skipif(sys.platform != "linux" or sandbox_probe() is not None,
                                reason=f"no sandbox here: {sandbox_probe()}")


@pytest.fixture
def attacker() -> Iterator[User]:
    yield from security_env.throwaway_user()


def test_a_leaked_descriptor_cannot_change_the_collected_output(tmp_path: Path) -> None:
    # The builder writes $out, then waits; meanwhile "someone it handed a descriptor
    # to" (here: the test, opening the staged file read-write) keeps it open.
    build = start(tmp_path, 'echo genuine > "$out"; chmod 666 "$out"; echo ready; '
                            'read x < /build/go')
    assert build.line() == "ready"
    staged = os.path.join(build.plan.staging_store, os.path.basename(build.out))
    leaked = os.open(staged, os.O_RDWR)
    try:
        release(build)
        code, log = build.finish()
        assert code == 0, log
        assert Path(build.out).read_text() == "genuine\n"
        # After collection (as the registration would see it), the holder writes.
        os.pwrite(leaked, b"tampered", 0)
        assert Path(build.out).read_text() == "genuine\n"
        assert os.fstat(leaked).st_ino != os.lstat(build.out).st_ino
    finally:
        os.close(leaked)


def test_control_a_leaked_descriptor_changes_a_moved_file(tmp_path: Path) -> None:
    """The probe above detects the problem: against a file moved into place (the old
    collection by rename), the same write through the same kind of descriptor lands."""
    staged, registered = tmp_path / "staged", tmp_path / "registered"
    staged.write_text("genuine\n")
    leaked = os.open(staged, os.O_RDWR)
    try:
        os.rename(staged, registered)
        os.pwrite(leaked, b"tampered", 0)
        assert registered.read_text().startswith("tampered")
    finally:
        os.close(leaked)


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(b"\\0" + sys.argv[1].encode())
s.send(b"hello")
print("connected")
"""


class _AbstractListener:
    """An abstract Unix socket on the host, counting who connects."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(b"\0" + name.encode())
        self.sock.listen(8)
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.received.append(conn.recv(100))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()


def test_fixed_output_builds_cannot_reach_abstract_sockets(tmp_path: Path,
                                                           attacker: User) -> None:
    name = f"runner-test-{os.getpid()}-{id(tmp_path)}"
    listener = _AbstractListener(name)
    try:
        script = (
            f"python3 -c '{_CONNECT}' {name} > /build/connect.txt 2>&1; echo connect=$?; "
            "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); "
            "s.bind(b\"\\0mine\"); print(\"bound\")' 2>&1; echo bind=$?; "
            "python3 -c 'import socket; a, b = socket.socketpair(); a.send(b\"x\"); "
            "print(b.recv(1))'; "
            'echo done > "$out"')
        build = start(tmp_path, script, fixed_output=True)
        code, log = build.finish()
        assert code == 0, log
        assert "connect=1" in log and "bind=1" in log, log
        assert "b'x'" in log  # socketpair still works
        failure = (build.build_dir / "connect.txt").read_text()
        assert os.strerror(errno.EAFNOSUPPORT) in failure
        assert listener.received == []
        # Control: the same probe, run by a local user outside any sandbox, connects.
        reached = security_env.probe(attacker, _CONNECT, name)
        assert reached.returncode == 0 and "connected" in reached.stdout, reached.stderr
    finally:
        listener.close()
    assert listener.received == [b"hello"]
