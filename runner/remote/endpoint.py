"""Remote endpoints as Bazel's `--remote_executor` spells them, and their gRPC channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from runner.errors import RunnerError

# Keepalive pings notice a remote that vanished without closing the connection
# (a dead host, a cut network) while an Execute stream waits for a long build. A
# server that died closes its connections and is noticed at once. gRPC servers by
# default accept a ping without data at most every 5 minutes and answer more with
# GOAWAY `too_many_pings` (buildbox-casd did, 90 s into a long build): stay above that.
KEEPALIVE_MS = 360_000
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True)
class Endpoint:
    url: str  # as the user wrote it, for messages
    target: str  # what gRPC dials: host:port or unix:/path
    secure: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`grpc://host:port`, `grpcs://host:port` (TLS) or `unix:/path`."""
        if url.startswith("unix:"):
            path = url[len("unix:"):]
            if path.startswith("//"):
                path = path[2:]
            if not path.startswith("/"):
                raise RunnerError(f"remote URL '{url}': a unix socket path must be absolute",
                                  reason="bad-url")
            return cls(url, f"unix:{path}", secure=False)
        try:
            parts = urlsplit(url)
        except ValueError as e:
            raise RunnerError(f"remote URL '{url}' is malformed: {e}",
                              reason="bad-url") from None
        if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
            raise RunnerError(
                f"remote URL '{url}' is not grpc://HOST:PORT, grpcs://HOST:PORT or unix:/PATH",
                reason="bad-url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise RunnerError(f"remote URL '{url}' must not have a path or a query",
                              reason="bad-url")
        try:
            port = parts.port
        except ValueError:
            raise RunnerError(f"remote URL '{url}' has a bad port",
                              reason="bad-url") from None
        secure = parts.scheme == "grpcs"
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return cls(url, f"{host}:{port or (443 if secure else 80)}", secure)

    def open_channel(self) -> Any:
        """A gRPC channel (not yet connected: gRPC dials on first use)."""
        if self.secure:
            return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(),
                                       options=CHANNEL_OPTIONS)
        return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
