"""The daemon's framing against hand-made clients: older protocol minors, hostile
input, vanishing and concurrent clients. The daemon must keep serving and never
register anything invalid."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.daemon.client import Client, DaemonError
from runner.daemon.protocol import PROTOCOL_VERSION, WORKER_MAGIC_1, Op
from runner.daemon.server import listen
from runner.daemon.wire import EndOfStream
from runner.errors import RunnerError
from runner.store import nar
from runner.store.local_store import LocalStore
from runner.store.paths import make_text_path
from tests.daemon_harness import Daemon


@pytest.fixture
def daemon(tmp_path: Path, store_dir: str) -> Iterator[Daemon]:
    with Daemon(str(tmp_path / "socket")) as d:
        yield d
        assert d.stop() == 0


def _client(d: Daemon, minor: int = 34) -> Client:
    return Client(d.socket, version=1 << 8 | minor).connect()


def _add_text(c: Client, name: str, text: bytes, refs: list[str] = ()) -> str:  # type: ignore[assignment]
    c.writer.u64(Op.ADD_TEXT_TO_STORE).text(name).data(text).texts(refs)
    c.process_stderr()
    return c.reader.text()


def _is_valid(c: Client, path: str) -> bool:
    c.writer.u64(Op.IS_VALID_PATH).text(path)
    c.process_stderr()
    return c.reader.flag()


def _still_serves(d: Daemon, store_dir: str) -> None:
    with _client(d) as c:
        path = _add_text(c, "alive", b"still here")
        assert path == make_text_path("alive", hashlib.sha256(b"still here").digest(), [],
                                      store_dir)
        assert _is_valid(c, path)


def _raw(d: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(d.socket)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("minor", [10, 16, 21, 25, 26, 33, 34])
def test_older_minors_are_served(daemon: Daemon, store_dir: str, minor: int) -> None:
    with _client(daemon, minor) as c:
        assert c.daemon_version == PROTOCOL_VERSION
        path = _add_text(c, "old", f"minor {minor}".encode())
        assert _is_valid(c, path)
        c.writer.u64(Op.QUERY_PATH_INFO).text(path)
        c.process_stderr()
        if minor >= 17:
            assert c.reader.flag()
        c.reader.text()  # deriver
        nar_hash = c.reader.text()
        assert nar_hash == nar.hash_path(path)[0].hex()
        assert c.reader.texts() == []
        c.reader.u64(), c.reader.u64()  # registration time, NAR size
        if minor >= 16:
            assert (c.reader.u64(), c.reader.texts(), c.reader.text()[:5]) == (0, [], "text:")
        # An error has the layout of the client's minor: the client can read it.
        with pytest.raises(DaemonError, match="is not valid"):
            c.writer.u64(Op.QUERY_PATH_HASH).text(f"{store_dir}/{'0' * 32}-x")
            c.process_stderr()
        assert _is_valid(c, path)  # and the connection goes on


def test_too_old_a_client_is_refused(daemon: Daemon, store_dir: str) -> None:
    with pytest.raises(EndOfStream):
        Client(daemon.socket, version=1 << 8 | 9).connect()
    daemon.wait_for("unsupported client protocol version 1.9")
    _still_serves(daemon, store_dir)


def test_add_to_store_nar_over_every_transport(daemon: Daemon, store_dir: str,
                                               tmp_path: Path) -> None:
    """Minor 34 frames the NAR, 21-22 tunnel it with STDERR_READ, older send it inline."""
    for minor in (34, 22, 20):
        content = tmp_path / f"c{minor}"
        content.write_text(f"content {minor}")
        dump = b"".join(nar.dump(str(content)))
        nar_hash = hashlib.sha256(dump).hexdigest()
        # Named like an input-addressed path: only a trusted client may add it unsigned.
        path = f"{store_dir}/{'1' * 31}{minor % 10}-imported-{minor}"
        with _client(daemon, minor) as c:
            c.writer.u64(Op.ADD_TO_STORE_NAR).text(path).text("").text(nar_hash).texts([])
            c.writer.u64(7).u64(len(dump)).u64(0).texts([]).text("").u64(0).u64(1)
            if minor >= 23:
                c.writer.u64(len(dump)).raw(dump).u64(0)
                c.process_stderr()
            elif minor >= 21:
                c.process_stderr(io.BytesIO(dump).read)
            else:
                c.writer.raw(dump)
                c.process_stderr()
            assert _is_valid(c, path)
        assert Path(path).read_text() == f"content {minor}"


def test_garbage_and_truncation_do_not_stop_the_daemon(daemon: Daemon, store_dir: str) -> None:
    with _raw(daemon) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert _read_all(sock) == b""  # wrong magic: closed without a word
    daemon.wait_for("protocol mismatch")
    with _raw(daemon) as sock:
        sock.sendall(struct.pack("<Q", WORKER_MAGIC_1)[:5])  # half a number, then gone
    with _client(daemon) as c:
        c.writer.u64(Op.IS_VALID_PATH).u64(200).raw(b"/short")  # a string cut short
        c.writer.flush()
        c.sock.shutdown(socket.SHUT_WR)
        assert _read_all(c.sock) == b""
    _still_serves(daemon, store_dir)


def test_huge_length_prefix_is_refused_before_reading(daemon: Daemon, store_dir: str) -> None:
    with _client(daemon) as c:
        c.writer.u64(Op.IS_VALID_PATH).u64(4 << 30)  # 4 GiB announced, nothing sent
        with pytest.raises(DaemonError, match="too long"):
            c.process_stderr()
    daemon.wait_for("too long")
    # Control: the same string with a sane length is answered.
    with _client(daemon) as c:
        assert not _is_valid(c, f"{store_dir}/{'0' * 32}-x")
    # A framed chunk may announce 4 GiB: it is read piecewise, never allocated.
    with _client(daemon) as c:
        c.writer.u64(Op.ADD_TO_STORE).text("big").text("fixed:r:sha256").texts([]).u64(0)
        c.writer.u64(4 << 30).raw(b"not a nar")
        c.writer.flush()
        c.sock.close()
    daemon.wait_for("closed")
    _still_serves(daemon, store_dir)


def test_unknown_opcode_is_a_clean_error(daemon: Daemon, store_dir: str) -> None:
    with _client(daemon) as c:
        c.writer.u64(999)
        with pytest.raises(DaemonError, match="invalid operation 999"):
            c.process_stderr()
    # An obsolete operation whose arguments are known is refused and the connection goes on.
    with _client(daemon) as c:
        c.writer.u64(Op.EXPORT_PATH).text(f"{store_dir}/{'0' * 32}-x").u64(0)
        with pytest.raises(DaemonError, match="obsolete"):
            c.process_stderr()
        assert not _is_valid(c, f"{store_dir}/{'0' * 32}-x")


def test_client_vanishing_mid_nar_leaves_nothing(daemon: Daemon, store_dir: str,
                                                 state_dir: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(300_000))
    dump = b"".join(nar.dump(str(tree)))
    path = f"{store_dir}/{'2' * 32}-vanished"
    with _client(daemon) as c:
        c.writer.u64(Op.ADD_TO_STORE_NAR).text(path).text("")
        c.writer.text(hashlib.sha256(dump).hexdigest()).texts([])
        c.writer.u64(0).u64(len(dump)).u64(0).texts([]).text("").u64(0).u64(1)
        c.writer.u64(len(dump)).raw(dump[:200_000])  # then the client is gone
        c.writer.flush()
    daemon.wait_for("closed")
    with LocalStore(store_dir, state_dir) as store:
        assert not store.is_valid(path)
    assert not os.path.lexists(path)
    assert not [n for n in os.listdir(store_dir) if n.startswith(".tmp-")]
    assert run(["store", "verify", "--check-contents"]) == 0
    assert "store is consistent" in capsys.readouterr().out


def test_lying_nar_hash_is_refused(daemon: Daemon, store_dir: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("real")
    dump = b"".join(nar.dump(str(tmp_path / "f")))
    path = f"{store_dir}/{'3' * 32}-liar"
    with _client(daemon) as c:
        c.writer.u64(Op.ADD_TO_STORE_NAR).text(path).text("").text("00" * 32).texts([])
        c.writer.u64(0).u64(len(dump)).u64(0).texts([]).text("").u64(0).u64(1)
        c.writer.u64(len(dump)).raw(dump).u64(0)
        with pytest.raises(DaemonError, match="hash mismatch importing path"):
            c.process_stderr()
        assert not _is_valid(c, path)  # the connection stays in step
    assert not os.path.lexists(path)


def test_many_concurrent_clients(daemon: Daemon, store_dir: str, state_dir: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    errors: list[BaseException] = []
    paths: list[str] = []
    shared = b"shared by everyone"

    def client(i: int) -> None:
        try:
            with _client(daemon) as c:
                common = _add_text(c, "common", shared)
                own = _add_text(c, f"own-{i}", f"client {i}".encode(), [common])
                assert _is_valid(c, own)
                c.writer.u64(Op.QUERY_VALID_PATHS).texts([common, own]).u64(0)
                c.process_stderr()
                assert sorted(c.reader.texts()) == sorted([common, own])
                paths.append(own)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(set(paths)) == 50
    assert run(["store", "verify", "--check-contents"]) == 0
    assert "store is consistent" in capsys.readouterr().out


def test_sigterm_stops_the_daemon_and_its_connections(tmp_path: Path, store_dir: str) -> None:
    d = Daemon(str(tmp_path / "s" / "socket"))
    with d:
        c = _client(d)  # an idle connection the daemon must end
        mode = os.stat(d.socket).st_mode & 0o777
        assert mode == 0o666
        assert os.stat(os.path.dirname(d.socket)).st_mode & 0o777 == 0o755
        assert d.stop() == 0
        with pytest.raises((EndOfStream, OSError)):
            c.writer.u64(Op.IS_VALID_PATH).text(f"{store_dir}/{'0' * 32}-x")
            c.process_stderr()
        c.close()
    assert "stopped after" in "".join(d.log)


def _gc_dead(c: Client, delete: bool) -> list[str]:
    c.writer.u64(Op.COLLECT_GARBAGE).u64(2 if delete else 1).texts([]).u64(0)
    c.writer.u64((1 << 64) - 1).u64(0).u64(0).u64(0)
    c.process_stderr()
    paths = c.reader.texts()
    c.reader.u64(), c.reader.u64()
    return paths


def test_temp_roots_live_as_long_as_the_connection(daemon: Daemon, store_dir: str) -> None:
    with _client(daemon) as c:
        path = _add_text(c, "rooted", b"keep me while connected")
    daemon.wait_for("closed")  # the adding connection, and with it its roots, are gone
    holder = _client(daemon)
    holder.writer.u64(Op.ADD_TEMP_ROOT).text(path)
    holder.process_stderr()
    assert holder.reader.u64() == 1
    with _client(daemon) as c:
        assert path not in _gc_dead(c, delete=True)
        assert _is_valid(c, path)
    holder.close()
    daemon.wait_for("closed")
    daemon.wait_for("closed")
    with _client(daemon) as c:
        assert path in _gc_dead(c, delete=True)
        assert not _is_valid(c, path)
    assert not os.path.lexists(path)


def test_systemd_socket_activation(tmp_path: Path, store_dir: str) -> None:
    import subprocess
    import sys

    from tests.daemon_harness import ROOT

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "activated")
    listener.bind(path)
    listener.listen(8)
    fd = listener.fileno()
    proc = subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -m runner daemon', sys.executable],
        preexec_fn=lambda: os.dup2(fd, 3), pass_fds=[3],  # systemd passes fd 3
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "the socket passed by systemd" in proc.stderr.readline()
        listener.close()
        with Client(path).connect() as c:
            assert not _is_valid(c, f"{store_dir}/{'0' * 32}-x")
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unusable_socket_path_is_a_one_line_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert run(["daemon", "--socket", str(tmp_path / "file" / "socket")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on ") and err.count("\n") == 1
    with pytest.raises(RunnerError) as e:
        listen(str(tmp_path / "file" / "socket"))
    assert e.value.reason == "socket"
