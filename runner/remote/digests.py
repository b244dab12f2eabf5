"""Content digests (SHA-256, the only digest function we speak) and blobs to upload."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

# (hex sha256, size): hashable, unlike the Digest message.
Key = tuple[str, int]

CHUNK = 1 << 20


def key_of(data: bytes) -> Key:
    return hashlib.sha256(data).hexdigest(), len(data)


def key_of_file(path: str) -> Key:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def digest(key: Key) -> re_pb2.Digest:
    return re_pb2.Digest(hash=key[0], size_bytes=key[1])


def key(d: re_pb2.Digest) -> Key:
    return d.hash, d.size_bytes


_HEX64 = re.compile(r"[0-9a-f]{64}")


def checked_key(d: re_pb2.Digest, what: str) -> Key:
    """`key` of a digest the server sent, refused unless it is a SHA-256 and a size."""
    if not _HEX64.fullmatch(d.hash) or d.size_bytes < 0:
        raise RunnerError(f"remote executor sent a malformed digest for {what}: "
                          f"{d.hash[:80]!r}/{d.size_bytes}", reason="remote-error")
    return d.hash, d.size_bytes


def show(k: Key) -> str:
    return f"{k[0]}/{k[1]}"


@dataclass(frozen=True)
class Blob:
    """Bytes to upload: held in memory (protos, small texts) or read from a file."""

    key: Key
    data: bytes | None = None
    path: str | None = None

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(key_of(data), data=data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as f:
            return f.read()

    def chunks(self, size: int) -> Iterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), size):
                yield self.data[start:start + size]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while chunk := f.read(size):
                yield chunk


def message_blob(message: re_pb2.Directory | re_pb2.Command | re_pb2.Action) -> Blob:
    # Deterministic serialisation: equal messages must give equal digests.
    return Blob.of(message.SerializeToString(deterministic=True))
