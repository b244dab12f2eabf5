"""Typed-as-Any constructors for the generated gRPC stubs (which carry no type hints)."""

from __future__ import annotations

from typing import Any

from runner.remote._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as _re_grpc,
)
from runner.remote._protos.google.bytestream import bytestream_pb2_grpc as _bs_grpc


def _make(factory: Any, channel: Any) -> Any:
    return factory(channel)


def capabilities(channel: Any) -> Any:
    return _make(_re_grpc.CapabilitiesStub, channel)


def cas(channel: Any) -> Any:
    return _make(_re_grpc.ContentAddressableStorageStub, channel)


def action_cache(channel: Any) -> Any:
    return _make(_re_grpc.ActionCacheStub, channel)


def execution(channel: Any) -> Any:
    return _make(_re_grpc.ExecutionStub, channel)


def bytestream(channel: Any) -> Any:
    return _make(_bs_grpc.ByteStreamStub, channel)
