"""A small HTTP/1.1 client for binary caches: keep-alive reuse, timeouts, retries.

`http.client` does the protocol; this adds what a cache client needs. Idle
connections are kept per origin and reused (a narinfo lookup is one small
request, so a new TCP/TLS handshake each time would dominate). Transient
failures (connection errors, timeouts, 5xx, 429) are retried with
exponential backoff before a response body is handed out; a 404 is an
answer, not a failure. A connection the server closed while idle is
replaced at once without counting as a retry.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import IO

from runner.errors import RunnerError

DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 3
_BACKOFF = 0.25
_MAX_IDLE_PER_ORIGIN = 8
_UPLOAD_BLOCK = 64 * 1024  # bytes of a file body sent at a time
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_Origin = tuple[str, str, int]
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class HttpUnavailable(RunnerError):
    """The server could not be reached or kept failing: the whole cache is unusable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="substituter-down")


class Response:
    """A response whose body is read in pieces; closing it returns the connection."""

    def __init__(self, client: HttpClient, origin: _Origin,
                 conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.length = resp.length
        self._client = client
        self._origin = origin
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.read() if n < 0 else self._resp.read(n)
        except _NETWORK_ERRORS as e:
            self._drop()
            raise HttpUnavailable(f"transfer failed: {_describe(e)}") from None

    def read_all(self) -> bytes:
        try:
            return self.read()
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._resp.isclosed() and not self._resp.will_close:
            self._client._release(self._origin, conn)
        else:
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class HttpClient:
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    _idle: dict[_Origin, list[http.client.HTTPConnection]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, url: str, body: bytes | IO[bytes] | None = None,
                length: int | None = None) -> Response:
        """Send one request, retrying transient failures; raises HttpUnavailable.

        A file `body` is streamed (rewound for every attempt) as `length` bytes.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise RunnerError(f"URL '{url}' is malformed: {e}", reason="bad-url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RunnerError(f"not an http(s) URL: '{url}'", reason="bad-url")
        origin = (parts.scheme, parts.hostname, port)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": "runner", "Accept-Encoding": "identity"}
        if body is not None and not isinstance(body, bytes):
            headers["Content-Length"] = str(length)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_BACKOFF * 2 ** (attempt - 1))
            try:
                conn, resp = self._send(origin, method, target, body, headers)
            except _NETWORK_ERRORS as e:
                problem = _describe(e)
                continue
            if resp.status in _TRANSIENT_STATUS:
                problem = f"HTTP {resp.status} {resp.reason}"
                resp.read()
                if resp.will_close:
                    conn.close()
                else:
                    self._release(origin, conn)
                continue
            return Response(self, origin, conn, resp)
        tries = f" (after {self.retries + 1} attempts)" if self.retries else ""
        raise HttpUnavailable(f"{method} {url}: {problem}{tries}")

    def _send(self, origin: _Origin, method: str, target: str, body: bytes | IO[bytes] | None,
              headers: dict[str, str]) -> tuple[http.client.HTTPConnection,
                                                http.client.HTTPResponse]:
        # A pooled connection may have been closed by the server while idle:
        # that failure says nothing about the server, so retry once on a new one.
        while True:
            conn, reused = self._acquire(origin)
            if body is not None and not isinstance(body, bytes):
                body.seek(0)
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused:
                    raise
            except BaseException:
                conn.close()
                raise

    def _acquire(self, origin: _Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=ssl.create_default_context(),
                                               blocksize=_UPLOAD_BLOCK), False
        return http.client.HTTPConnection(host, port, timeout=self.timeout,
                                          blocksize=_UPLOAD_BLOCK), False

    def _release(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < _MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for conns in pools.values():
            for conn in conns:
                conn.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__
