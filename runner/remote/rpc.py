"""gRPC calls with deadlines, and gRPC failures as RunnerErrors."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from runner.errors import RunnerError
from runner.remote.endpoint import Endpoint

T = TypeVar("T")

# Codes that mean "the service is not there" rather than "it refused this".
_DOWN = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
# Codes a busy server answers (BuildGrid's concurrent-RPC limit): retried with
# backoff, as Bazel does, before they count as failures.
_BUSY = {"RESOURCE_EXHAUSTED", "ABORTED"}
BUSY_RETRIES = 5
BUSY_FIRST_DELAY = 0.1  # seconds, doubled per retry


def code_name(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    return code.name if code is not None else "UNKNOWN"


def details(error: grpc.RpcError) -> str:
    text = error.details() if hasattr(error, "details") else None
    return str(text or "").strip()


def as_runner_error(endpoint: Endpoint, what: str, error: grpc.RpcError) -> RunnerError:
    name = code_name(error)
    detail = details(error)
    suffix = f": {detail}" if detail else ""
    # A server that finds our pings too frequent ends the connection (GOAWAY); it is
    # up, and the channel reconnects: this call failed, the endpoint is not down.
    if name in _DOWN and "too many pings" not in detail.lower():
        return RunnerError(f"remote executor '{endpoint.url}' is unavailable ({what}: "
                           f"{name}{suffix})", reason="remote-unavailable")
    return RunnerError(f"remote executor '{endpoint.url}' failed ({what}: {name}{suffix})",
                       reason="remote-error")


def is_not_found(error: grpc.RpcError) -> bool:
    return code_name(error) == "NOT_FOUND"


def call(endpoint: Endpoint, what: str, fn: Callable[..., T], request: Any,
         timeout: float) -> T:
    """One unary call with a deadline; any gRPC failure becomes a RunnerError."""
    delay = BUSY_FIRST_DELAY
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return fn(request, timeout=timeout)
        except grpc.RpcError as e:
            if code_name(e) not in _BUSY or attempt == BUSY_RETRIES:
                raise as_runner_error(endpoint, what, e) from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")
