"""ContentAddressableStorage and ByteStream: find what is missing, upload, download."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import grpc

from runner.errors import RunnerError
from runner.remote import rpc, stubs
from runner.remote._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from runner.remote._protos.google.bytestream import bytestream_pb2
from runner.remote.digests import Blob, Key, digest, key, key_of, show
from runner.remote.endpoint import Endpoint

FIND_BATCH = 4096  # digests per FindMissingBlobs request (~300 KiB)
STREAM_CHUNK = 1024 * 1024
EMPTY: Key = key_of(b"")


class Cas:
    def __init__(self, endpoint: Endpoint, channel: Any, instance: str, max_batch_bytes: int,
                 rpc_timeout: float) -> None:
        self.endpoint = endpoint
        self.instance = instance
        self.max_batch_bytes = max_batch_bytes
        self.timeout = rpc_timeout
        self._cas = stubs.cas(channel)
        self._bytestream = stubs.bytestream(channel)

    def _call(self, what: str, fn: Any, request: Any) -> Any:
        return rpc.call(self.endpoint, what, fn, request, self.timeout)

    def find_missing(self, keys: Collection[Key]) -> set[Key]:
        wanted = sorted(set(keys) - {EMPTY})  # the empty blob is always there
        missing: set[Key] = set()
        for start in range(0, len(wanted), FIND_BATCH):
            request = re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance,
                blob_digests=[digest(k) for k in wanted[start:start + FIND_BATCH]])
            reply = self._call("FindMissingBlobs", self._cas.FindMissingBlobs, request)
            missing.update(key(d) for d in reply.missing_blob_digests)
        return missing

    def upload(self, blobs: Iterable[Blob]) -> None:
        """Small blobs in batches up to the server's limit, large ones over ByteStream."""
        batch: list[Blob] = []
        size = 0
        for blob in sorted(blobs, key=lambda b: b.key):
            if blob.key[1] > self.max_batch_bytes - 1024:
                self._write(blob)
                continue
            if size + blob.key[1] > self.max_batch_bytes - 1024 * (len(batch) + 1):
                self._batch_update(batch)
                batch, size = [], 0
            batch.append(blob)
            size += blob.key[1]
        if batch:
            self._batch_update(batch)

    def _batch_update(self, blobs: list[Blob]) -> None:
        request = re_pb2.BatchUpdateBlobsRequest(
            instance_name=self.instance,
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b.key), data=b.read())
                      for b in blobs])
        reply = self._call("BatchUpdateBlobs", self._cas.BatchUpdateBlobs, request)
        for response in reply.responses:
            if response.status.code != 0:
                raise RunnerError(
                    f"remote executor '{self.endpoint.url}' refused blob "
                    f"{show(key(response.digest))}: {response.status.message}",
                    reason="remote-error")

    def _resource(self, *parts: str) -> str:
        return "/".join(p for p in (self.instance, *parts) if p)

    def _write(self, blob: Blob) -> None:
        name = self._resource("uploads", str(uuid.uuid4()), "blobs", blob.key[0],
                              str(blob.key[1]))

        def requests() -> Iterator[bytestream_pb2.WriteRequest]:
            offset = 0
            for chunk in blob.chunks(STREAM_CHUNK):
                last = offset + len(chunk) >= blob.key[1]
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "", write_offset=offset,
                    data=chunk, finish_write=last)
                offset += len(chunk)

        reply = rpc.call(self.endpoint, "ByteStream.Write", self._bytestream.Write, requests(),
                         self.timeout + blob.key[1] / (1024 * 1024))
        if reply.committed_size not in (blob.key[1], -1):
            raise RunnerError(f"remote executor '{self.endpoint.url}' stored "
                              f"{reply.committed_size} of {blob.key[1]} bytes of "
                              f"{show(blob.key)}", reason="remote-error")

    def read(self, keys: Collection[Key]) -> dict[Key, bytes]:
        """The contents of every blob (all held in memory: for logs, trees, small files)."""
        found: dict[Key, bytes] = {k: b"" for k in keys if k[1] == 0}
        small = sorted(k for k in set(keys) if 0 < k[1] <= self.max_batch_bytes // 2)
        for k in set(keys) - set(small) - found.keys():
            found[k] = b"".join(self.read_stream(k))
        batch: list[Key] = []
        for k in small:
            if sum(b[1] for b in batch) + k[1] > self.max_batch_bytes // 2:
                found.update(self._batch_read(batch))
                batch = []
            batch.append(k)
        if batch:
            found.update(self._batch_read(batch))
        return found

    def _batch_read(self, keys: list[Key]) -> dict[Key, bytes]:
        request = re_pb2.BatchReadBlobsRequest(instance_name=self.instance,
                                               digests=[digest(k) for k in keys])
        reply = self._call("BatchReadBlobs", self._cas.BatchReadBlobs, request)
        out: dict[Key, bytes] = {}
        for response in reply.responses:
            k = key(response.digest)
            if response.status.code != 0:
                raise self._missing(k, response.status.message)
            if key_of(response.data) != k:
                raise self._corrupt(k)
            out[k] = response.data
        return out

    def read_stream(self, k: Key) -> Iterator[bytes]:
        """A blob in chunks over ByteStream, checked against its digest at the end."""
        request = bytestream_pb2.ReadRequest(resource_name=self._resource("blobs", *map(str, k)))
        h = hashlib.sha256()
        size = 0
        try:
            for reply in self._bytestream.Read(request, timeout=self.timeout + k[1] / 1e6):
                h.update(reply.data)
                size += len(reply.data)
                if size > k[1]:  # never take (or write) more than the digest says
                    raise self._corrupt(k)
                yield reply.data
        except grpc.RpcError as e:
            if rpc.is_not_found(e):
                raise self._missing(k, rpc.details(e)) from None
            raise rpc.as_runner_error(self.endpoint, "ByteStream.Read", e) from None
        if (h.hexdigest(), size) != k:
            raise self._corrupt(k)

    def _missing(self, k: Key, why: str) -> RunnerError:
        return RunnerError(f"remote executor '{self.endpoint.url}' lost blob {show(k)}"
                           f"{': ' + why if why else ''}", reason="remote-error")

    def _corrupt(self, k: Key) -> RunnerError:
        return RunnerError(f"remote executor '{self.endpoint.url}' sent corrupt blob {show(k)}",
                           reason="remote-error")
