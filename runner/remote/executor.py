"""Build one derivation on a REAPI service: the API the worker calls.

`execute` is blocking and thread-safe (the worker runs it in a thread) and
never touches the SQLite store: it leaves the outputs at their store paths,
as a local builder would. `build` adds the local output checks and the
registration, for callers that own a store in their thread.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from runner.build.outputs import OutputRejected, collect_outputs
from runner.build.result import Status
from runner.errors import RunnerError
from runner.remote import capabilities, rpc, stubs
from runner.remote._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from runner.remote.action import (
    PreparedAction,
    platform_properties,
    prepare_action,
    remote_refusal,
)
from runner.remote.cas import Cas
from runner.remote.digests import Key, checked_key, digest, message_blob
from runner.remote.endpoint import Endpoint
from runner.remote.fetch import has_outputs, materialise
from runner.remote.merkle import RootBuilder, Tree, path_tree
from runner.settings import Settings
from runner.store.derivation import Derivation
from runner.store.local_store import LocalStore

_DEADLINE_EXCEEDED = 4
_FAILED_PRECONDITION = 9


@dataclass(frozen=True)
class RemoteOptions:
    """Settings of the remote client (docs/remote.md lists the setting names)."""

    instance: str = ""
    connect_timeout: float = 10.0  # seconds to reach the server at all
    rpc_timeout: float = 60.0  # seconds for each CAS / ActionCache call


@dataclass
class RemoteResult:
    status: Status  # BUILT, SUBSTITUTED (ActionCache hit), FAILED, TIMED_OUT, …
    log: bytes  # the builder's stdout, then its stderr (REAPI keeps them apart)
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> store path
    message: str = ""
    exit_code: int | None = None
    action_digest: str = ""  # hash/size, for the server's logs

    def log_tail(self, lines: int) -> list[str]:
        text = self.log.decode("utf-8", errors="replace")
        return text.splitlines()[-lines:] if lines > 0 else []


class RemoteExecutor:
    def __init__(self, endpoint: str | Endpoint, settings: Settings,
                 options: RemoteOptions | None = None) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.settings = settings
        self.options = options or RemoteOptions()
        self._channel: Any = self.endpoint.open_channel()
        self._lock = threading.Lock()
        self._limits: capabilities.ServerLimits | None = None
        self._cas: Cas | None = None
        self._trees: dict[str, Tree] = {}  # store paths are immutable: one tree each
        self._present: set[Key] = set()  # blobs the server confirmed during this session

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ---------------------------------------------------------

    def server_capabilities(self) -> re_pb2.ServerCapabilities:
        """The first call to a server: it also tells, within `connect_timeout`, whether
        anything answers at the endpoint (a refused connection fails at once)."""
        stub = stubs.capabilities(self._channel)
        request = re_pb2.GetCapabilitiesRequest(instance_name=self.options.instance)
        try:
            caps: re_pb2.ServerCapabilities = stub.GetCapabilities(
                request, timeout=self.options.connect_timeout)
        except grpc.RpcError as e:
            if rpc.code_name(e) in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise RunnerError(
                    f"cannot connect to remote executor '{self.endpoint.url}' "
                    f"({rpc.code_name(e)}: {rpc.details(e) or 'no answer'})",
                    reason="remote-unavailable") from None
            raise rpc.as_runner_error(self.endpoint, "GetCapabilities", e) from None
        return caps

    def _connect(self) -> Cas:
        with self._lock:
            if self._cas is None:
                self._limits = capabilities.check(self.endpoint.url, self.server_capabilities())
                self._cas = Cas(self.endpoint, self._channel, self.options.instance,
                                self._limits.max_batch_bytes, self.options.rpc_timeout)
            return self._cas

    def _tree(self, path: str) -> Tree:
        with self._lock:
            tree = self._trees.get(path)
        if tree is None:
            tree = path_tree(path)
            with self._lock:
                self._trees[path] = tree
        return tree

    # -- one derivation -----------------------------------------------------

    def execute(self, drv_path: str, drv: Derivation, closure: Collection[str]) -> RemoteResult:
        """Run `drv` remotely (or take it from the remote ActionCache) and leave its
        outputs at their store paths. The caller holds the output locks; transport
        problems raise RunnerError (reason `remote-unavailable` or `remote-error`)."""
        if why := remote_refusal(drv):
            raise RunnerError(f"cannot build '{drv_path}' remotely: {why}",
                              reason="remote-unsupported")
        cas = self._connect()
        prepared = prepare_action(drv, self.settings.store_dir, closure, self._tree,
                                  self.settings)
        outputs = {name: out.path for name, out in drv.outputs.items()}
        shown = f"{prepared.action_key[0]}/{prepared.action_key[1]}"
        cached = self._lookup(prepared)
        if cached is not None:
            log = self._log(cas, cached)
            materialise(cas, cached, prepared.outputs, self.settings.store_dir)
            return RemoteResult(Status.SUBSTITUTED, log, outputs, exit_code=0,
                                action_digest=shown)
        self._upload(cas, prepared)
        response = self._run(prepared, drv_path)
        if response.status.code == _FAILED_PRECONDITION:  # the CAS lost inputs: once more
            with self._lock:
                self._present.clear()
            self._upload(cas, prepared)
            response = self._run(prepared, drv_path)
        result = response.result
        log = self._log(cas, result)
        if response.status.code == _DEADLINE_EXCEEDED:
            seconds = prepared.action.timeout.seconds
            return RemoteResult(Status.TIMED_OUT, log, outputs,
                                f"builder for '{drv_path}' timed out after {seconds} seconds",
                                action_digest=shown)
        if response.status.code != 0:
            raise RunnerError(
                f"remote executor '{self.endpoint.url}' could not run '{drv_path}': "
                f"{response.status.message or 'status ' + str(response.status.code)}",
                reason="remote-error")
        if result.exit_code != 0:
            return RemoteResult(Status.FAILED, log, outputs,
                                f"builder for '{drv_path}' failed with exit code "
                                f"{result.exit_code}", result.exit_code, shown)
        materialise(cas, result, prepared.outputs, self.settings.store_dir)
        return RemoteResult(Status.BUILT, log, outputs, exit_code=0, action_digest=shown)

    def build(self, drv_path: str, drv: Derivation, closure: Collection[str],
              store: LocalStore) -> RemoteResult:
        """`execute`, then check the outputs (NAR hash, references, fixed-output hash,
        reference constraints) and register them in `store` in one transaction."""
        result = self.execute(drv_path, drv, closure)
        if not result.status.ok:
            return result
        try:
            infos = collect_outputs(drv_path, drv, closure, store.compute_closure)
            store.register_valid_paths(infos)
        except OutputRejected as e:
            result.status, result.message = e.status, e.message
        except OSError as e:
            result.status = Status.SETUP_FAILED
            result.message = f"cannot register outputs of '{drv_path}': {e}"
        return result

    def run_command(self, argv: Sequence[str], system: str) -> tuple[int, bytes]:
        """Run `argv` in an empty input root, never cached: `runner remote check`."""
        cas = self._connect()
        properties = platform_properties(system, network=False) or {}
        platform = re_pb2.Platform(properties=[
            re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(properties.items())])
        root = RootBuilder()
        root.add_dir("tmp")
        root_key = root.build()
        command = message_blob(re_pb2.Command(arguments=list(argv), platform=platform))
        action = re_pb2.Action(command_digest=digest(command.key),
                               input_root_digest=digest(root_key), do_not_cache=True,
                               platform=platform)
        action_blob = message_blob(action)
        blobs = {**root.blobs, command.key: command, action_blob.key: action_blob}
        prepared = PreparedAction(action, action_blob.key, re_pb2.Command(), blobs, {})
        self._upload(cas, prepared)
        response = self._run(prepared, " ".join(argv))
        if response.status.code != 0:
            raise RunnerError(f"remote executor '{self.endpoint.url}' could not run "
                              f"{list(argv)}: {response.status.message}", reason="remote-error")
        return response.result.exit_code, self._log(cas, response.result)

    # -- steps --------------------------------------------------------------

    def _lookup(self, prepared: PreparedAction) -> re_pb2.ActionResult | None:
        """A successful, complete ActionCache entry. Failures are never taken from the
        cache (buildbox-casd caches them): a build that failed may succeed next time."""
        stub = stubs.action_cache(self._channel)
        request = re_pb2.GetActionResultRequest(
            instance_name=self.options.instance, action_digest=digest(prepared.action_key),
            inline_stdout=True, inline_stderr=True)
        try:
            result: re_pb2.ActionResult = stub.GetActionResult(
                request, timeout=self.options.rpc_timeout)
        except grpc.RpcError as e:
            if rpc.is_not_found(e):
                return None
            raise rpc.as_runner_error(self.endpoint, "GetActionResult", e) from None
        if result.exit_code != 0 or not has_outputs(result, prepared.outputs):
            return None
        return result

    def _upload(self, cas: Cas, prepared: PreparedAction) -> None:
        with self._lock:
            unknown = [k for k in prepared.blobs if k not in self._present]
        missing = cas.find_missing(unknown)
        cas.upload(prepared.blobs[k] for k in missing)
        with self._lock:
            self._present.update(unknown)

    def _run(self, prepared: PreparedAction, drv_path: str) -> re_pb2.ExecuteResponse:
        stub = stubs.execution(self._channel)
        request = re_pb2.ExecuteRequest(
            instance_name=self.options.instance, action_digest=digest(prepared.action_key),
            skip_cache_lookup=True)  # _lookup did that, and refuses cached failures
        timeout = prepared.action.timeout.seconds
        # No deadline without a build timeout: keepalive pings notice a dead server.
        deadline = timeout + self.options.rpc_timeout if timeout else None
        last = None
        try:
            for operation in stub.Execute(request, timeout=deadline):
                last = operation
        except grpc.RpcError as e:
            raise rpc.as_runner_error(self.endpoint, f"Execute '{drv_path}'", e) from None
        if last is None or not last.done:
            raise RunnerError(f"remote executor '{self.endpoint.url}' ended the execution of "
                              f"'{drv_path}' without a result", reason="remote-unavailable")
        if last.HasField("error"):
            raise RunnerError(f"remote executor '{self.endpoint.url}' could not run "
                              f"'{drv_path}': {last.error.message}", reason="remote-error")
        response = re_pb2.ExecuteResponse()
        try:
            unpacked = last.response.Unpack(response)
        except DecodeError:
            unpacked = False
        if not unpacked:
            raise RunnerError(f"remote executor '{self.endpoint.url}' sent an unexpected "
                              f"reply for '{drv_path}'", reason="remote-error")
        return response

    def _log(self, cas: Cas, result: re_pb2.ActionResult) -> bytes:
        parts = []
        for raw, d in ((result.stdout_raw, result.stdout_digest),
                       (result.stderr_raw, result.stderr_digest)):
            if raw or not d.size_bytes:
                parts.append(raw)
            else:
                k = checked_key(d, "the build log")
                parts.append(cas.read([k])[k])
        return b"".join(parts)
