"""The worker protocol's framing: little-endian u64s and length-prefixed, zero-padded strings.

Every length a peer announces is checked against a bound before anything is
allocated or read, and bulk data (framed streams, NAR contents) is read in
bounded pieces, so a hostile length prefix costs the daemon nothing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Protocol

from runner.errors import RunnerError

CHUNK = 64 * 1024
MAX_STRING = 1 << 20  # names, paths, hashes, option values
MAX_TEXT = 64 << 20  # whole file contents sent as one string (old add-text-to-store)
MAX_COUNT = 1 << 24  # elements of one list
_ZEROS = bytes(8)
_U64 = struct.Struct("<Q")


class Channel(Protocol):
    """What the framing needs of a connection: a socket, or stdin/stdout (`--stdio`)."""

    def recv(self, n: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def fileno(self) -> int: ...

    def settimeout(self, timeout: float | None, /) -> None: ...


class Pipes:
    """stdin and stdout as one `Channel` (`runner daemon --stdio`, behind ssh)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd

    def recv(self, n: int, /) -> bytes:
        return os.read(self._read_fd, n)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view):]

    def fileno(self) -> int:
        return self._read_fd

    def settimeout(self, timeout: float | None, /) -> None:
        pass  # the other end is a process we were started by: it is not hostile


class ProtocolError(RunnerError):
    """The peer broke the framing: the connection cannot continue."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="protocol")


class EndOfStream(ProtocolError):
    """The peer closed the connection."""

    def __init__(self) -> None:
        super().__init__("unexpected end-of-file")


def padding(n: int) -> int:
    return -n % 8


class Reader:
    """Buffered reads from a socket; every read has an upper bound."""

    def __init__(self, sock: Channel) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self, want: int) -> None:
        while len(self._buf) < want:
            try:
                chunk = self._sock.recv(max(CHUNK, want - len(self._buf)))
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                raise EndOfStream()
            self._buf += chunk

    def fileno(self) -> int:
        return self._sock.fileno()

    def at_eof(self) -> bool:
        """True when the peer has closed the connection cleanly between messages."""
        if self._buf:
            return False
        try:
            self._fill(1)
        except EndOfStream:
            return True
        return False

    def exact(self, n: int) -> bytes:
        """Exactly `n` bytes; callers bound `n` (at most CHUNK-sized requests for bulk data)."""
        self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def some(self, n: int) -> bytes:
        """Between 1 and `n` bytes (whatever is buffered or arrives next)."""
        if not self._buf:
            self._fill(1)
        data = bytes(self._buf[:n])
        del self._buf[: len(data)]
        return data

    def u64(self) -> int:
        value: int = _U64.unpack(self.exact(8))[0]
        return value

    def num(self, limit: int = (1 << 64) - 1, what: str = "number") -> int:
        value = self.u64()
        if value > limit:
            raise ProtocolError(f"{what} {value} is out of range")
        return value

    def flag(self) -> bool:
        return self.u64() != 0

    def data(self, limit: int = MAX_STRING) -> bytes:
        n = self.u64()
        if n > limit:
            raise ProtocolError(f"string of {n} bytes is too long (at most {limit})")
        data = self.exact(n)
        pad = self.exact(padding(n))
        if pad.strip(b"\0"):
            raise ProtocolError("non-zero padding")
        return data

    def text(self, limit: int = MAX_STRING) -> str:
        data = self.data(limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not valid UTF-8") from None

    def texts(self, limit: int = MAX_STRING) -> list[str]:
        count = self.num(MAX_COUNT, "list length")
        return [self.text(limit) for _ in range(count)]


class FramedReader:
    """A framed stream inside the connection: chunks `u64 len, bytes`, a 0 length ends it.

    `read(n)` hands out at most `n` bytes and never buffers a whole announced
    chunk, so the chunk length needs no bound. `drain()` skips to the end, as
    the connection must stay in step after a failed operation.
    """

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._left = 0
        self.eof = False

    def read(self, n: int) -> bytes:
        while not self._left:
            if self.eof:
                return b""
            self._left = self._reader.u64()
            if not self._left:
                self.eof = True
                return b""
        data = self._reader.some(min(n, self._left, CHUNK))
        self._left -= len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class Writer:
    """Replies collected in memory and sent by `flush()` (small messages) or at once (bulk)."""

    def __init__(self, sock: Channel) -> None:
        self._sock = sock
        self._buf = bytearray()

    def u64(self, value: int) -> Writer:
        self._buf += _U64.pack(value)
        return self

    def flag(self, value: bool) -> Writer:
        return self.u64(1 if value else 0)

    def data(self, data: bytes) -> Writer:
        self._buf += _U64.pack(len(data))
        self._buf += data
        self._buf += _ZEROS[: padding(len(data))]
        return self

    def text(self, text: str) -> Writer:
        return self.data(text.encode("utf-8"))

    def texts(self, items: Iterable[str]) -> Writer:
        items = list(items)
        self.u64(len(items))
        for item in items:
            self.text(item)
        return self

    def raw(self, data: bytes) -> Writer:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()
        return self

    def flush(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            self._sock.sendall(data)
