"""Where a binary cache's files live: a directory (`file://`) or an HTTP server.

Both answer "this file, or None if it is absent"; anything else going wrong
raises `RunnerError` (an unreachable server: reason "substituter-down").
Writing is atomic: a reader never sees half a NAR or half a narinfo.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.substituters.http_client import HttpClient

_SPOOL_IN_MEMORY = 1024 * 1024  # larger uploads are staged on disk


class Stream(Protocol):
    def read(self, n: int = -1) -> bytes: ...
    def close(self) -> None: ...


class Transport(Protocol):
    url: str

    def read(self, rel: str) -> bytes | None: ...
    def open(self, rel: str) -> Stream | None: ...
    def exists(self, rel: str) -> bool: ...
    def write(self, rel: str, chunks: Iterable[bytes]) -> None: ...
    def create(self) -> None: ...
    def probe(self) -> Transport:
        """This transport for one quick try (a cache known down: short timeout, no retries)."""
        ...


class FileTransport:
    def __init__(self, url: str, root: str) -> None:
        self.url = url
        self.root = root

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes | None:
        stream = self.open(rel)
        if stream is None:
            return None
        try:
            return stream.read()
        except OSError as e:
            raise RunnerError(f"cannot read '{self._path(rel)}': {e.strerror}",
                              reason="substituter-down") from None
        finally:
            stream.close()

    def open(self, rel: str) -> Stream | None:
        try:
            return open(self._path(rel), "rb")
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.isdir(self.root):
                raise RunnerError(f"cache directory '{self.root}' does not exist",
                                  reason="substituter-down") from None
            return None
        except OSError as e:
            raise RunnerError(f"cannot read '{self._path(rel)}': {e.strerror}",
                              reason="substituter-down") from None

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._path(rel))

    def probe(self) -> Transport:
        return self

    def create(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise RunnerError(f"cannot create cache directory '{self.root}': {e.strerror}",
                              reason="io") from None

    def write(self, rel: str, chunks: Iterable[bytes]) -> None:
        dest = self._path(rel)
        directory = os.path.dirname(dest)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        except OSError as e:
            raise RunnerError(f"cannot write to cache '{self.url}': {e.strerror}",
                              reason="io") from None
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except OSError as e:
            raise RunnerError(f"cannot write '{dest}': {e.strerror}", reason="io") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class HttpTransport:
    def __init__(self, url: str, client: HttpClient) -> None:
        self.url = url
        self._base = url.rstrip("/") + "/"
        self._client = client

    def _full(self, rel: str) -> str:
        return self._base + urllib.parse.quote(rel)

    def read(self, rel: str) -> bytes | None:
        stream = self.open(rel)
        if stream is None:
            return None
        try:
            return stream.read()
        finally:
            stream.close()

    def open(self, rel: str) -> Stream | None:
        resp = self._client.request("GET", self._full(rel))
        if resp.status in (404, 410):
            resp.read_all()
            return None
        if resp.status != 200:
            resp.close()
            raise RunnerError(f"GET {self._full(rel)}: HTTP {resp.status}",
                              reason="substituter-down")
        return resp

    def exists(self, rel: str) -> bool:
        resp = self._client.request("HEAD", self._full(rel))
        resp.read_all()
        return resp.status == 200

    def create(self) -> None:
        pass  # the server owns its directory

    def probe(self) -> Transport:
        return HttpTransport(self.url, self._client.quick())

    def write(self, rel: str, chunks: Iterable[bytes]) -> None:
        # Spooled to learn the Content-Length (static servers and buckets want one, not
        # chunked encoding) and to send it again on a retry; sent in blocks from there.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as body:
            length = 0
            for chunk in chunks:
                body.write(chunk)
                length += len(chunk)
            resp = self._client.request("PUT", self._full(rel), body=body, length=length)
            resp.read_all()
        if resp.status not in (200, 201, 204):
            raise RunnerError(f"PUT {self._full(rel)}: HTTP {resp.status}", reason="io")
