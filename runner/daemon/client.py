"""A minimal worker-protocol client: the handshake, one operation at a time, and the
stderr channel. Used by the tests (older protocol minors, hostile input) and meant
as the base of `--store unix://…` for runner's own commands."""

from __future__ import annotations

import socket
from collections.abc import Callable

from runner.daemon.protocol import (
    PROTOCOL_VERSION,
    STDERR_ERROR,
    STDERR_LAST,
    STDERR_NEXT,
    STDERR_READ,
    STDERR_RESULT,
    STDERR_START_ACTIVITY,
    STDERR_STOP_ACTIVITY,
    STDERR_WRITE,
    WORKER_MAGIC_1,
    WORKER_MAGIC_2,
    minor,
)
from runner.daemon.wire import ProtocolError, Reader, Writer
from runner.errors import RunnerError

_RES_BUILD_LOG_LINE = 101  # Nix's ResultType::BuildLogLine


class DaemonError(RunnerError):
    """The daemon ended an operation with `STDERR_ERROR`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="daemon")


class Client:
    def __init__(self, path: str, *, version: int = PROTOCOL_VERSION, timeout: float = 60.0
                 ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = Reader(self.sock)
        self.writer = Writer(self.sock)
        self.version = version
        self.daemon_version = 0
        self.messages: list[str] = []
        # Called with each log line instead of collecting it (a build's streamed log).
        self.on_message: Callable[[str], None] | None = None

    @property
    def minor(self) -> int:
        return minor(self.version)

    def handshake(self) -> None:
        self.writer.u64(WORKER_MAGIC_1).flush()
        if self.reader.u64() != WORKER_MAGIC_2:
            raise ProtocolError("protocol mismatch")
        self.daemon_version = self.reader.u64()
        self.writer.u64(self.version)
        if self.minor >= 14:
            self.writer.u64(0)
        if self.minor >= 11:
            self.writer.u64(0)
        self.writer.flush()
        if self.minor >= 33:
            self.reader.text()
        self.process_stderr()

    def set_options(self, overrides: dict[str, str] | None = None) -> None:
        w = self.writer
        w.u64(19)
        # keep-failed, keep-going, fallback, verbosity, max-jobs, max-silent-time,
        # (obsolete) use-build-hook, verbose-build, log-type, build-trace, cores, substitute
        for field in (0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 0, 1):
            w.u64(field)
        if self.minor >= 12:
            items = sorted((overrides or {}).items())
            w.u64(len(items))
            for name, value in items:
                w.text(name).text(value)
        self.process_stderr()

    def connect(self) -> Client:
        self.handshake()
        self.set_options()
        return self

    def process_stderr(self, source: Callable[[int], bytes] | None = None) -> None:
        """Read log messages up to `STDERR_LAST`; raise `DaemonError` on `STDERR_ERROR`."""
        self.writer.flush()
        while True:
            kind = self.reader.u64()
            if kind == STDERR_LAST:
                return
            if kind == STDERR_ERROR:
                if self.minor >= 26:
                    self.reader.text()
                    self.reader.u64()
                    self.reader.text()
                    message = self.reader.text()
                    self.reader.u64()
                    for _ in range(self.reader.u64()):
                        self.reader.u64()
                        self.reader.text()
                else:
                    message = self.reader.text()
                    self.reader.u64()
                raise DaemonError(message)
            if kind == STDERR_NEXT:
                line = self.reader.text()
                if self.on_message is not None:
                    self.on_message(line)
                else:
                    self.messages.append(line)
            elif kind == STDERR_READ:
                n = self.reader.u64()
                if source is None:
                    raise ProtocolError("the daemon asked for data")
                self.writer.data(source(n)).flush()
            elif kind == STDERR_WRITE:
                self.reader.data()
            elif kind == STDERR_START_ACTIVITY:
                self.reader.u64(), self.reader.u64(), self.reader.u64(), self.reader.text()
                self._fields()
                self.reader.u64()
            elif kind == STDERR_STOP_ACTIVITY:
                self.reader.u64()
            elif kind == STDERR_RESULT:
                self.reader.u64()
                result_type = self.reader.u64()
                fields = self._fields()
                if result_type == _RES_BUILD_LOG_LINE and self.on_message and fields:
                    self.on_message(str(fields[0]))  # Nix's daemon sends build logs so
            else:
                raise ProtocolError(f"unknown stderr message {kind:#x}")

    def _fields(self) -> list[int | str]:
        fields: list[int | str] = []
        for _ in range(self.reader.u64()):
            if self.reader.u64() == 0:
                fields.append(self.reader.u64())
            else:
                fields.append(self.reader.text())
        return fields

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
