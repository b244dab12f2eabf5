"""`runner cache serve`: a binary cache over HTTP, like nix-serve.

Serving a store, narinfos are computed on the fly from the store's
database (signed with `--sign-key` when given) and NARs are streamed
uncompressed from the store tree, so nothing is stored twice. Serving a
directory (a cache written by `runner copy --to file://…`) is plain static
file serving, plus `PUT` when writable so that `runner copy --to http://…`
can fill it. A store also serves `failure/<hash>.failure` records of its
cached failures (signed with `--sign-key`) and `log/<drv>` build logs.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runner.build.logs import read_log
from runner.errors import RunnerError
from runner.store import derivation, nar
from runner.store.derivation import Derivation
from runner.store.local_store import LocalStore
from runner.store.path_info import FailureRecord, PathInfo
from runner.substituters.cache_info import CacheInfo
from runner.substituters.failure_export import Exported, export_failure
from runner.substituters.narinfo import NarInfo
from runner.substituters.signing import SecretKey

_NARINFO = re.compile(r"/([0-9a-df-np-sv-z]{32})\.narinfo")
_STORE_NAR = re.compile(r"/nar/([0-9a-df-np-sv-z]{32})-([0-9a-df-np-sv-z]{52})\.nar")
_FAILURE = re.compile(r"/failure/([0-9a-df-np-sv-z]{32})\.failure")
_LOG = re.compile(r"/log/([0-9a-df-np-sv-z]{32}-[^/]+\.drv)")
_SAFE_FILE = re.compile(r"/(nix-cache-info|[0-9a-z]{32}\.narinfo|nar/[0-9a-z]{52}\.nar"
                        r"(\.xz|\.zst|\.bz2)?|log/[0-9a-z]{32}-[^/]+|"
                        r"failure/[0-9a-z]{32}\.failure)")
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class StoreSource:
    """Serve the paths of a local store; one DB connection per request (SQLite is per thread).

    `real_dir` is where the store's files are when that is not `store_dir`
    itself (a store copied or mounted elsewhere, as Nix's `?real=`).
    """

    store_dir: str
    state_dir: str
    sign_key: SecretKey | None = None
    priority: int = 30
    real_dir: str | None = None

    def file(self, path: str) -> str:
        return os.path.join(self.real_dir or self.store_dir, os.path.basename(path))

    def cache_info(self) -> bytes:
        return CacheInfo(self.store_dir, True, self.priority).to_text().encode()

    def lookup(self, part: str) -> PathInfo | None:
        with LocalStore(self.store_dir, self.state_dir, bind=self.real_dir is None) as store:
            path = store.query_path_from_hash_part(part)  # an index scan, not a listing
            return store.query_path_info(path) if path is not None else None

    def failure(self, part: str) -> bytes | None:
        """The (signed) record of a cached failure of the derivation `part`, made now."""
        exported = self._failure(part)
        return exported.record.to_text().encode() if exported is not None else None

    def log(self, base: str) -> bytes | None:
        """A derivation's log as the caches hold it: plain text; for a cached failure, the
        very bytes its record states."""
        drv_path = f"{self.store_dir}/{base}"
        exported = self._failure(base[:32])
        if exported is not None and exported.record.drv_path == drv_path:
            return exported.log
        try:
            return read_log(self.state_dir, drv_path)
        except RunnerError:
            return None

    def _failure(self, part: str) -> Exported | None:
        with LocalStore(self.store_dir, self.state_dir, bind=self.real_dir is None) as store:
            path = store.query_path_from_hash_part(part)
            if path is None or not path.endswith(".drv"):
                return None
            return export_failure(_Files(store, self), self.state_dir, path, self.sign_key)

    def narinfo(self, info: PathInfo) -> bytes:
        result = NarInfo(
            path=info.path, url=f"nar/{_hash_part(info)}-{info.nar_hash.base32()}.nar",
            nar_hash=info.nar_hash, nar_size=info.nar_size, compression="none",
            references=info.references, deriver=info.deriver, ca=info.ca)
        if self.sign_key is not None:
            result = result.signed(self.sign_key)
        return result.to_text().encode()


class _Files:
    """The store, reading derivations where the files are (`real_dir`)."""

    def __init__(self, store: LocalStore, source: StoreSource) -> None:
        self._store = store
        self._source = source

    def read_derivation(self, path: str) -> Derivation:
        try:
            with open(self._source.file(path), "rb") as f:
                data = f.read()
        except OSError as e:
            raise RunnerError(f"cannot read derivation '{path}': {e.strerror}",
                              reason="bad-drv") from None
        return derivation.parse(data, path)

    def query_failure(self, path: str) -> FailureRecord | None:
        return self._store.query_failure(path)


def _hash_part(info: PathInfo) -> str:
    return info.path.rsplit("/", 1)[1][:32]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if isinstance(self.server.source, StoreSource):
                self._get_store(self.server.source, path, head)
            else:
                self._get_file(self.server.source, path, head)
        except RunnerError as e:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, e.message.encode() + b"\n", head=head)

    def _get_store(self, source: StoreSource, path: str, head: bool) -> None:
        if path == "/nix-cache-info":
            self._send(HTTPStatus.OK, source.cache_info(), head=head)
            return
        if m := _NARINFO.fullmatch(path):
            info = source.lookup(m.group(1))
            if info is None:
                self._not_found(head)
            else:
                self._send(HTTPStatus.OK, source.narinfo(info), head=head,
                           content_type="text/x-nix-narinfo")
            return
        if m := _FAILURE.fullmatch(path):
            self._send_optional(source.failure(m.group(1)), head)
            return
        if m := _LOG.fullmatch(path):
            self._send_optional(source.log(m.group(1)), head, "text/plain; charset=utf-8")
            return
        if m := _STORE_NAR.fullmatch(path):
            info = source.lookup(m.group(1))
            if info is None or info.nar_hash.base32() != m.group(2):
                self._not_found(head)
                return
            self._stream(nar.dump(source.file(info.path)), info.nar_size, head)
            return
        self._not_found(head)

    def _get_file(self, root: str, path: str, head: bool) -> None:
        if not _SAFE_FILE.fullmatch(path):
            self._not_found(head)
            return
        full = os.path.join(root, path[1:])
        if not os.path.isfile(full):
            self._not_found(head)
            return
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._stream(iter(lambda: f.read(_CHUNK), b""), size, head)

    def do_PUT(self) -> None:
        root = self.server.source
        path = self.path.split("?", 1)[0]
        if not self.server.writable or not isinstance(root, str):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only cache\n")
            return
        length = self.headers.get("Content-Length")
        if not _SAFE_FILE.fullmatch(path) or length is None or not length.isdigit():
            self._send(HTTPStatus.BAD_REQUEST, b"bad upload\n")
            return
        dest = os.path.join(root, path[1:])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = int(length)
                while remaining:
                    chunk = self.rfile.read(min(remaining, _CHUNK))
                    if not chunk:
                        raise ConnectionError("upload cut short")
                    out.write(chunk)
                    remaining -= len(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._send(HTTPStatus.CREATED, b"")

    def _send_optional(self, body: bytes | None, head: bool,
                       content_type: str = "text/plain") -> None:
        if body is None:
            self._not_found(head)
        else:
            self._send(HTTPStatus.OK, body, head=head, content_type=content_type)

    def _not_found(self, head: bool) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", head=head)

    def _send(self, status: HTTPStatus, body: bytes, *, head: bool = False,
              content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _stream(self, chunks: Iterator[bytes], size: int, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-nix-nar")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if head:
            return
        # Once the headers are out, a failure can only be told by closing the connection
        # early: the client sees a short (broken) transfer, never a complete-looking body
        # with an error message in it. (A client would reject a wrong NAR anyway: its
        # hash and size are checked against the narinfo.)
        produced = sent = 0
        try:
            for chunk in chunks:
                produced += len(chunk)
                piece = chunk[:size - sent]  # never more than announced
                if piece:
                    self.wfile.write(piece)
                    sent += len(piece)
        except (RunnerError, OSError) as e:
            self.log_error("%s: transfer aborted: %s", self.path,
                           e.message if isinstance(e, RunnerError) else e)
            self.close_connection = True
            return
        if produced != size:  # the file changed under us: do not let the client trust it
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], source: StoreSource | str, *,
                 writable: bool, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.source = source
        self.writable = writable
        self.verbose = verbose


def make_server(source: StoreSource | str, *, host: str = "127.0.0.1", port: int = 0,
                writable: bool = False, verbose: bool = False) -> ThreadingHTTPServer:
    """A server for a store (`StoreSource`) or a cache directory; port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise RunnerError(f"port {port} is out of range (0-65535)", reason="usage")
    try:
        return _Server((host, port), source, writable=writable, verbose=verbose)
    except (OSError, OverflowError, UnicodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RunnerError(f"cannot listen on {host}:{port}: {why}", reason="io") from None


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


__all__ = ["StoreSource", "make_server", "serve_in_thread"]
