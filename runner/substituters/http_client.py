"""The HTTP client of binary caches: urllib3's pools and retries, our errors on top.

urllib3 does the work: keep-alive connections pooled per origin (a narinfo
lookup is one small request, so a new TCP/TLS handshake each time would
dominate), `Retry` with exponential back-off for transient failures
(connection errors, timeouts, 5xx, 429; `Retry-After` honoured up to a
cap), and connect/read timeouts. What stays ours: a 404 is an answer, not
a failure; a server that cannot be reached or keeps failing raises
`HttpUnavailable` (reason "substituter-down"), which makes the whole cache
unusable for the run; a body is streamed, and a connection goes back to
the pool only once its body was read to the end.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import IO

import urllib3
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util import Retry, Timeout

from runner.errors import RunnerError

DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 3
PROBE_TIMEOUT = 3.0  # a cache known down gets one try this long
_BACKOFF = 0.25  # seconds before the first retry, doubling after each
_MAX_WAIT = 30  # longest back-off or Retry-After honoured, in seconds
_MAX_IDLE_PER_ORIGIN = 8
_UPLOAD_BLOCK = 64 * 1024  # bytes of a file body sent at a time
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpUnavailable(RunnerError):
    """The server could not be reached or kept failing: the whole cache is unusable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="substituter-down")


class Response:
    """A response whose body is read in pieces; closing it returns the connection."""

    def __init__(self, resp: urllib3.BaseHTTPResponse) -> None:
        self.status = resp.status
        self.length = resp.length_remaining
        self._resp = resp
        self._done = False

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._resp.read() if n < 0 else self._resp.read(n)
        except (HTTPError, OSError) as e:
            self._drop()
            raise HttpUnavailable(f"transfer failed: {_describe(e)}") from None
        if n < 0 or (n > 0 and not data):
            self._done = True
        return data

    def read_all(self) -> bytes:
        try:
            return self.read()
        finally:
            self.close()

    def close(self) -> None:
        if self._done:
            self._resp.release_conn()  # read to the end: the connection can be reused
        else:
            self._drop()  # unread body left on the wire: never reuse this connection

    def _drop(self) -> None:
        self._done = True
        self._resp.close()
        self._resp.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Retry(Retry):
    """urllib3's Retry, except that a timeout is not retried: a server that hangs once
    costs one timeout, not one per attempt."""

    def increment(self, method: str | None = None, url: str | None = None,
                  response: urllib3.BaseHTTPResponse | None = None,
                  error: Exception | None = None, _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> _Retry:
        if (_pool is not None and isinstance(error, Urllib3Timeout)
                and not isinstance(error, NewConnectionError)):
            raise MaxRetryError(_pool, url or "", error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class HttpClient:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES) -> None:
        self.timeout = timeout
        self.retries = retries
        self._pool = urllib3.PoolManager(
            maxsize=_MAX_IDLE_PER_ORIGIN, block=False, blocksize=_UPLOAD_BLOCK,
            timeout=Timeout(connect=timeout, read=timeout),
            ssl_context=ssl.create_default_context())

    def quick(self) -> HttpClient:
        """A client for one short try: probing a cache known to be down."""
        return HttpClient(min(self.timeout, PROBE_TIMEOUT), 0)

    def _retry(self) -> Retry:
        # Every method we send (GET, HEAD, and PUT of content-addressed files) is idempotent.
        return _Retry(total=self.retries, redirect=5, status_forcelist=_TRANSIENT_STATUS,
                     allowed_methods=None, backoff_factor=_BACKOFF, backoff_max=_MAX_WAIT,
                     retry_after_max=_MAX_WAIT, raise_on_status=False,
                     raise_on_redirect=False)

    def request(self, method: str, url: str, body: bytes | IO[bytes] | None = None,
                length: int | None = None) -> Response:
        """Send one request, retrying transient failures; raises HttpUnavailable.

        A file `body` is streamed (rewound for every attempt) as `length` bytes.
        """
        try:
            parts = urllib3.util.parse_url(url)
        except ValueError as e:
            raise RunnerError(f"URL '{url}' is malformed: {e}", reason="bad-url") from None
        if parts.scheme not in ("http", "https") or not parts.host:
            raise RunnerError(f"not an http(s) URL: '{url}'", reason="bad-url")
        headers = {"User-Agent": "runner", "Accept-Encoding": "identity"}
        if body is not None and not isinstance(body, bytes):
            headers["Content-Length"] = str(length)
            body.seek(0)  # urllib3 rewinds to here before each retry
        tries = f" (after {self.retries + 1} attempts)" if self.retries else ""
        try:
            resp = self._pool.request(method, url, body=body, headers=headers,
                                      retries=self._retry(), preload_content=False)
        except MaxRetryError as e:
            if _describe(e.reason) == "timed out":
                tries = ""  # never retried (see _Retry)
            raise HttpUnavailable(f"{method} {url}: {_describe(e.reason)}{tries}") from None
        except (HTTPError, OSError) as e:
            raise HttpUnavailable(f"{method} {url}: {_describe(e)}{tries}") from None
        if resp.status in _TRANSIENT_STATUS:  # still failing once the retries are spent
            Response(resp).read_all()
            raise HttpUnavailable(f"{method} {url}: HTTP {resp.status} {resp.reason}{tries}")
        return Response(resp)

    def close(self) -> None:
        self._pool.clear()


def _describe(e: BaseException | None) -> str:
    if isinstance(e, NewConnectionError):  # a subclass of the timeout error, oddly
        cause = e.__cause__ or e.__context__
        return _describe(cause) if cause is not None else "cannot connect"
    if isinstance(e, (Urllib3Timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ProtocolError) and e.args and isinstance(e.args[-1], BaseException):
        return _describe(e.args[-1])
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    if isinstance(e, HTTPError) and e.__context__ is not None:
        return _describe(e.__context__)
    return str(e) or type(e).__name__
