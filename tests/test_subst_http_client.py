"""The binary caches' HTTP client against a scripted server on loopback: retries, back-off,
Retry-After, keep-alive reuse, streamed uploads, and our errors on top."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.substituters.http_client import HttpClient, HttpUnavailable

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Script:
    replies: dict[str, list[Reply]] = field(default_factory=dict)  # path -> replies in turn
    seen: list[tuple[float, str, str, int, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def times(self, path: str) -> list[float]:
        return [t for t, _, p, _, _ in self.seen if p == path]

    @property
    def connections(self) -> int:
        return len({port for _, _, _, port, _ in self.seen})


@contextmanager
def scripted(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with script.lock:
                script.seen.append((time.monotonic(), self.command, self.path,
                                    self.client_address[1], body))
                queue = script.replies.get(self.path, [])
                status, headers, data = queue.pop(0) if len(queue) > 1 else (
                    queue[0] if queue else (404, {}, b""))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_keep_alive_reuses_one_connection() -> None:
    script = Script({"/a.narinfo": [(200, {}, b"StorePath: x\n")]})
    client = HttpClient(timeout=5, retries=0)
    with scripted(script) as url:
        for _ in range(5):
            assert client.request("GET", f"{url}/a.narinfo").read_all() == b"StorePath: x\n"
        resp = client.request("GET", f"{url}/missing.narinfo")
        assert resp.status == 404  # an answer, not a failure
        resp.read_all()
    assert len(script.seen) == 6 and script.connections == 1


def test_transient_failures_are_retried_with_back_off() -> None:
    script = Script({"/n": [(503, {}, b""), (502, {}, b""), (200, {}, b"ok")]})
    with scripted(script) as url:
        assert HttpClient(timeout=5, retries=3).request("GET", f"{url}/n").read_all() == b"ok"
    first, second, third = script.times("/n")
    assert third - second > second - first > 0  # the wait doubles


def test_retry_after_is_honoured() -> None:
    script = Script({"/n": [(503, {"Retry-After": "1"}, b""), (200, {}, b"ok")]})
    with scripted(script) as url:
        assert HttpClient(timeout=5, retries=1).request("GET", f"{url}/n").read_all() == b"ok"
    first, second = script.times("/n")
    assert second - first >= 0.95


def test_a_server_that_keeps_failing_is_unavailable() -> None:
    script = Script({"/n": [(500, {}, b"")]})
    with scripted(script) as url, pytest.raises(HttpUnavailable) as info:
        HttpClient(timeout=5, retries=2).request("GET", f"{url}/n")
    assert info.value.reason == "substituter-down"
    assert "HTTP 500" in info.value.message and "after 3 attempts" in info.value.message
    assert len(script.times("/n")) == 3


def test_a_streamed_upload_is_sent_again_whole_on_a_retry() -> None:
    script = Script({"/nar/x.nar": [(503, {}, b""), (201, {}, b"")]})
    data = bytes(range(256)) * 1000
    with scripted(script) as url:
        resp = HttpClient(timeout=5, retries=1).request("PUT", f"{url}/nar/x.nar",
                                                       body=io.BytesIO(data), length=len(data))
        resp.read_all()
    assert resp.status == 201
    assert [body for _, _, _, _, body in script.seen] == [data, data]


def test_a_body_left_unread_does_not_spoil_the_next_request() -> None:
    script = Script({"/big": [(200, {}, b"x" * 100_000)], "/small": [(200, {}, b"ok")]})
    client = HttpClient(timeout=5, retries=0)
    with scripted(script) as url:
        resp = client.request("GET", f"{url}/big")
        assert resp.read(10) == b"x" * 10
        resp.close()  # the rest is still on the wire: that connection must not be reused
        assert client.request("GET", f"{url}/small").read_all() == b"ok"
    assert script.connections == 2
