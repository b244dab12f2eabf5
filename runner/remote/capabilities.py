"""The server's Capabilities, and whether it can run our actions."""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import RunnerError
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

SHA256 = re_pb2.DigestFunction.SHA256
# Without a server limit, stay well below gRPC's default 4 MiB message size.
DEFAULT_BATCH_BYTES = 2 * 1024 * 1024
# `output_paths` in Command (we do not know in advance whether an output is a
# file or a directory) came with v2.1.
MIN_API = (2, 1)


@dataclass(frozen=True)
class ServerLimits:
    max_batch_bytes: int
    api_low: tuple[int, int]
    api_high: tuple[int, int]
    cache_update: bool  # clients may write the ActionCache (not needed by us)


def check(url: str, caps: re_pb2.ServerCapabilities) -> ServerLimits:
    """What we need: SHA-256 CAS, execution enabled, API v2.1 or later."""
    cache = caps.cache_capabilities
    execution = caps.execution_capabilities
    problems = []
    if cache.digest_functions and SHA256 not in cache.digest_functions:
        problems.append("its CAS does not use SHA-256")
    if not caps.HasField("execution_capabilities") or not execution.exec_enabled:
        problems.append("it does not offer remote execution")
    elif execution.digest_function not in (SHA256, re_pb2.DigestFunction.UNKNOWN) and \
            SHA256 not in execution.digest_functions:
        problems.append("its execution service does not use SHA-256")
    high = (caps.high_api_version.major, caps.high_api_version.minor)
    low = (caps.low_api_version.major, caps.low_api_version.minor)
    if caps.HasField("high_api_version") and (high < MIN_API or low[0] > MIN_API[0]):
        problems.append(f"it speaks REAPI {low[0]}.{low[1]}-{high[0]}.{high[1]}, "
                        f"we need 2.1 or later within v2")
    if problems:
        raise RunnerError(f"remote executor '{url}' cannot run our builds: "
                          + "; ".join(problems), reason="remote-unsupported")
    limit = cache.max_batch_total_size_bytes
    return ServerLimits(
        max_batch_bytes=min(limit, DEFAULT_BATCH_BYTES) if limit else DEFAULT_BATCH_BYTES,
        api_low=low, api_high=high,
        cache_update=cache.action_cache_update_capabilities.update_enabled,
    )


def describe(caps: re_pb2.ServerCapabilities) -> list[str]:
    """Human-readable lines for `runner remote check`."""
    cache = caps.cache_capabilities
    execution = caps.execution_capabilities
    fns = ", ".join(re_pb2.DigestFunction.Value.Name(f) for f in cache.digest_functions)
    lines = [
        f"api: {caps.low_api_version.major}.{caps.low_api_version.minor} - "
        f"{caps.high_api_version.major}.{caps.high_api_version.minor}",
        f"cas digest functions: {fns or '(unspecified)'}",
        f"cas batch limit: {cache.max_batch_total_size_bytes or '(none)'} bytes",
        f"action cache updates: {'yes' if cache.action_cache_update_capabilities.update_enabled else 'no'}",  # noqa: E501
        f"execution: {'enabled' if execution.exec_enabled else 'disabled'}",
    ]
    if execution.supported_node_properties:
        lines.append("node properties: " + ", ".join(execution.supported_node_properties))
    return lines
