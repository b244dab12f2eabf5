"""The daemon's listening socket and connections.

Like Nix's daemon, each accepted connection is served by its own forked
process: the connection's temporary GC roots are that process's roots and
vanish with it, a build's signals and a crash stay inside it, and the
store's SQLite connection is never shared. The parent only accepts, checks
who is calling (`SO_PEERCRED`) and forks; it holds no store handle itself.
SIGTERM/SIGINT stop accepting, forward the signal to every connection (whose
builds stop as `runner build` stops them) and wait for them to end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence

from runner.daemon.protocol import server_handshake, write_error
from runner.daemon.trust import Peer, admit, peer_of
from runner.daemon.wire import Channel, EndOfStream, Pipes, ProtocolError, Reader, Writer
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store.local_store import open_store

SOCKET_MODE = 0o666  # as Nix: who may connect is decided by allowed-users
HANDSHAKE_TIMEOUT = 60.0  # seconds a client may take to greet; then it is dropped


def log(message: str) -> None:
    print(f"runner daemon[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def default_socket(settings: Settings) -> str:
    return os.path.join(settings.state_dir, "daemon-socket", "socket")


def listen(path: str) -> socket.socket:
    """Bind a Unix socket at `path` (replacing a stale one), mode 0666, dir 0755."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound by a relative name: the sun_path limit (108 bytes) must not refuse deep dirs.
        cwd = os.open(".", os.O_RDONLY)
        try:
            os.chdir(directory)
            sock.bind(os.path.basename(path))
        finally:
            os.fchdir(cwd)
            os.close(cwd)
        os.chmod(path, SOCKET_MODE)
        sock.listen(128)
    except OSError as e:
        raise RunnerError(f"cannot listen on '{path}': {e.strerror}", reason="socket") from None
    sock.set_inheritable(False)
    return sock


class Server:
    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.children: dict[int, Peer] = {}
        self._stop: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _on_signal(self, sig: int, frame: object) -> None:
        if sig != signal.SIGCHLD:
            self._stop = sig
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")  # select() returns (PEP 475 would retry it)

    def run(self) -> int:
        """Accept until SIGTERM/SIGINT; returns once every connection has ended."""
        self.sock.setblocking(False)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        try:
            while self._stop is None:
                self._reap()
                ready, _, _ = select.select([self.sock.fileno(), self._wake_r], [], [])
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if self.sock.fileno() in ready and self._stop is None:
                    self._accept()
            log(f"stopping on {signal.Signals(self._stop).name}: "
                f"{len(self.children)} connection(s) to end")
            self._stop_children(self._stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
            conn.setblocking(True)
        except (BlockingIOError, InterruptedError):
            return  # the client left between select() and accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log(f"cannot accept a connection: {e.strerror}")
                return
            raise
        try:
            try:
                peer = peer_of(conn)
                decision = admit(peer, self.settings.strings("allowed-users"),
                                 self.settings.strings("trusted-users"))
                pid = os.fork()
            except OSError as e:  # this connection fails; the daemon goes on
                log(f"cannot serve a connection: {e.strerror or e}")
                return
            if pid == 0:
                code = 1
                try:
                    self.sock.close()
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    os.setsid()  # the client's terminal signals are not ours
                    code = serve_connection(conn, decision, self.settings)
                finally:
                    os._exit(code)
            shown = decision.describe() if isinstance(decision, Peer) else f"refused: {decision}"
            log(f"connection {pid}: {shown}")
            self.children[pid] = peer
        finally:
            conn.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if self.children.pop(pid, None) is not None:
                log(f"connection {pid} closed")

    def _stop_children(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.pop(pid, None)


def serve_connection(conn: Channel, decision: Peer | str, settings: Settings) -> int:
    """The body of a connection process; returns its exit status."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    reader, writer = Reader(conn), Writer(conn)
    version = 0
    try:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        version = server_handshake(reader, writer)
        conn.settimeout(None)
        if isinstance(decision, str):
            write_error(writer, version, decision)
            writer.flush()
            return 1
        with open_store(settings) as store:
            from runner.daemon.ops import HANDLERS
            from runner.daemon.protocol import STDERR_LAST
            from runner.daemon.session import Session

            writer.u64(STDERR_LAST)  # start-up went well
            writer.flush()
            Session(reader, writer, version, decision, store, settings).serve(HANDLERS)
        return 0
    except EndOfStream:
        return 0
    except (ProtocolError, RunnerError) as e:
        log(f"connection ended: {e.message}")
        if version:
            with contextlib.suppress(OSError):
                write_error(writer, version, e.message)
                writer.flush()
        return 1
    except (BrokenPipeError, ConnectionResetError):
        return 0
    except KeyboardInterrupt:
        return 1
    except OSError as e:
        log(f"connection ended: {e}")
        return 1
    except Exception as e:  # a bug of ours: one line in the daemon's log, the daemon lives on
        log(f"internal error: {type(e).__name__}: {e}")
        return 1


def _interrupt(sig: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_daemon(settings: Settings, socket_path: str | None, *,
               inherited: Sequence[socket.socket] = ()) -> int:
    """`runner daemon`: check the store opens, then serve until told to stop."""
    with open_store(settings):
        pass  # creates and migrates the store before any client arrives
    # Imported once here, not in every forked connection (a connection's first
    # operation would otherwise pay ~0.1 s of imports: bench/daemon_noop.py).
    import runner.daemon.ops
    import runner.daemon.session  # noqa: F401
    if inherited:
        sock = inherited[0]
        where = "the socket passed by systemd"
    else:
        path = socket_path or default_socket(settings)
        sock = listen(path)
        where = path
    log(f"listening on {where} (store {settings.store_dir})")
    start = time.monotonic()
    try:
        return Server(settings, sock).run()
    finally:
        sock.close()
        log(f"stopped after {time.monotonic() - start:.0f}s")


def run_stdio(settings: Settings) -> int:
    """`runner daemon --stdio`: one connection on stdin/stdout, as `nix-daemon --stdio`
    (what `ssh-ng://` stores start on the remote host). The caller is trusted, as Nix
    trusts the standard streams: it acts with its own rights on the store."""
    channel = Pipes(os.dup(0), os.dup(1))
    os.dup2(2, 1)  # a stray print must not corrupt the protocol stream
    uid, gid = os.getuid(), os.getgid()
    peer = Peer(os.getppid(), uid, gid, str(uid), str(gid), trusted=True)
    return serve_connection(channel, peer, settings)
