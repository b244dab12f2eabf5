"""The REAPI client's pure parts, and a remote that is not there (no server needed)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError
from runner.remote import capabilities
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from runner.remote._protos.build.bazel.semver import semver_pb2
from runner.remote.action import output_path, platform_properties, prepare_action, remote_refusal
from runner.remote.cas import Cas
from runner.remote.digests import digest, key_of
from runner.remote.endpoint import Endpoint
from runner.remote.executor import RemoteExecutor, RemoteOptions
from runner.remote.fetch import materialise
from runner.remote.merkle import RootBuilder, path_tree
from runner.settings import Settings
from runner.store import derivation
from runner.store.derivation import Derivation, DerivationOutput
from tests.deep_trees import flatten, make_chain
from tests.remote_server import BlobServer

EMPTY_DIR_KEY = ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0)


@pytest.mark.parametrize(("url", "target", "secure"), [
    ("grpc://localhost:8980", "localhost:8980", False),
    ("grpcs://cas.example.org:443", "cas.example.org:443", True),
    ("grpcs://cas.example.org", "cas.example.org:443", True),
    ("grpc://[::1]:9000", "[::1]:9000", False),
    ("unix:/run/casd.sock", "unix:/run/casd.sock", False),
    ("unix:///run/casd.sock", "unix:/run/casd.sock", False),
])
def test_endpoint_forms(url: str, target: str, secure: bool) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.target, endpoint.secure) == (target, secure)


@pytest.mark.parametrize("url", ["http://host:1", "grpc://", "host:8980", "unix:relative",
                                 "grpc://host:99999", "grpc://host:1/path"])
def test_bad_endpoints(url: str) -> None:
    with pytest.raises(RunnerError) as e:
        Endpoint.parse(url)
    assert e.value.reason == "bad-url"


def test_tree_of_a_path(tmp_path: Path) -> None:
    assert path_tree(str(_mkdir(tmp_path / "empty"))).node.key == EMPTY_DIR_KEY
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "b").write_text("bee")
    (tmp_path / "t" / "a").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "t" / "a", 0o555)
    os.symlink("/somewhere", tmp_path / "t" / "link")
    tree = path_tree(str(tmp_path / "t"))
    root = re_pb2.Directory.FromString(tree.blobs[tree.node.key].read())
    assert [(f.name, f.is_executable) for f in root.files] == [("a", True), ("b", False)]
    assert [(s.name, s.target) for s in root.symlinks] == [("link", "/somewhere")]
    assert key_of(b"bee") in tree.blobs
    assert tree.blobs[key_of(b"bee")].read() == b"bee"
    file_tree = path_tree(str(tmp_path / "t" / "b"))
    assert (file_tree.node.kind, file_tree.node.key) == ("file", key_of(b"bee"))


def test_root_builder_merges_paths() -> None:
    root = RootBuilder()
    root.add_dir("tmp")
    root.add_text("tmp/store/x", "x")
    root.add_text("etc/hosts", "h")
    top = re_pb2.Directory.FromString(root.blobs[root.build()].read())
    assert [d.name for d in top.directories] == ["etc", "tmp"]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _drv(store: str, **env: str) -> Derivation:
    out = f"{store}/0123456789abcdfghijklmnpqrsvwxyz-x"
    full = {"name": "x", "builder": "/bin/sh", "system": "x86_64-linux", "out": out, **env}
    return Derivation({"out": DerivationOutput(out)}, {}, [], "x86_64-linux", "/bin/sh",
                      ["-c", "echo > $out"], full)


def test_action_is_deterministic_and_mirrors_the_sandbox(tmp_path: Path) -> None:
    settings = Settings.load()
    store = settings.store_dir
    dep = _mkdir(Path(store) / "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dep")
    (dep / "f").write_text("dep")
    drv = _drv(store, passAsFile="blob", blob="contents")
    first = prepare_action(drv, store, [str(dep)], path_tree, settings)
    again = prepare_action(drv, store, [str(dep)], path_tree, settings)
    assert first.action_key == again.action_key
    assert first.command.working_directory == "build"
    assert list(first.command.arguments) == ["/bin/sh", "-c", "echo > $out"]
    assert list(first.command.output_paths) == [output_path(drv.outputs["out"].path)]
    assert first.command.output_paths[0].startswith("../" + store.lstrip("/"))
    env = {v.name: v.value for v in first.command.environment_variables}
    assert [v.name for v in first.command.environment_variables] == sorted(env)
    assert env["NIX_BUILD_TOP"] == env["PWD"] == "/build"
    assert env["NIX_BUILD_CORES"] == "0"  # the setting as is: no local CPU count
    assert env["blobPath"].startswith("/build/.attr-")
    props = {p.name: p.value for p in first.action.platform.properties}
    assert props == {"ISA": "x86-64", "OSFamily": "linux", "network": "off",
                     "unixGID": "100", "unixUID": "1000"}
    assert not first.action.do_not_cache
    assert first.action.timeout.seconds == 0
    assert key_of(b"contents") in first.blobs and key_of(b"dep") in first.blobs
    # A different closure or a derivation timeout gives a different action.
    other = prepare_action(_drv(store, timeout="7"), store, [], path_tree, settings)
    assert other.action_key != first.action_key
    assert other.action.timeout.seconds == 7
    impure = prepare_action(_drv(store, __impure="1"), store, [], path_tree, settings)
    assert impure.action.do_not_cache


def test_platforms_and_refusals() -> None:
    assert platform_properties("aarch64-darwin", network=True) == {
        "ISA": "aarch64", "OSFamily": "macos", "network": "on", "unixGID": "100",
        "unixUID": "1000"}
    assert platform_properties("mips-plan9", network=False) is None
    assert remote_refusal(_drv("/s")) is None
    assert remote_refusal(_drv("/s", preferLocalBuild="1"))
    assert remote_refusal(_drv("/s", __noChroot="1"))
    assert remote_refusal(_drv("/s", __sandboxPaths="/opt"))
    # REAPI strings are UTF-8: Latin-1 bytes from a Nix-written .drv build locally.
    latin1 = derivation.parse(derivation.encode(_drv("/s").text).replace(
        b'("name","x")', b'("chars","\xc5\xc4"),("name","x")'))
    assert "not UTF-8" in (remote_refusal(latin1) or "")


def _caps(**kw: object) -> re_pb2.ServerCapabilities:
    caps = re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256], max_batch_total_size_bytes=1 << 20),
        execution_capabilities=re_pb2.ExecutionCapabilities(
            digest_function=re_pb2.DigestFunction.SHA256, exec_enabled=True),
        low_api_version={"major": 2}, high_api_version={"major": 2, "minor": 3})
    for name, value in kw.items():
        getattr(caps, name).CopyFrom(value)
    return caps


def test_capabilities_are_checked() -> None:
    assert capabilities.check("u", _caps()).max_batch_bytes == 1 << 20
    cases: list[dict[str, Any]] = [
        {"execution_capabilities": re_pb2.ExecutionCapabilities(exec_enabled=False)},
        {"cache_capabilities": re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA1])},
        {"high_api_version": semver_pb2.SemVer(major=2, minor=0)},
    ]
    for case in cases:
        with pytest.raises(RunnerError) as e:
            capabilities.check("u", _caps(**case))
        assert e.value.reason == "remote-unsupported"


def test_nothing_listening_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load()
    for url in (f"grpc://127.0.0.1:{port}", f"unix:{tmp_path}/none.sock"):
        with RemoteExecutor(url, settings, RemoteOptions(connect_timeout=30)) as executor, \
                pytest.raises(RunnerError) as e:
            executor.execute("/s/x.drv", _drv(settings.store_dir), [])
        assert e.value.reason == "remote-unavailable"
        assert url in e.value.message


def test_silent_server_hits_the_deadline() -> None:
    # Accepts TCP connections but never speaks HTTP/2: only the deadline ends the wait.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"grpc://127.0.0.1:{server.getsockname()[1]}"
        with RemoteExecutor(url, Settings.load(), RemoteOptions(connect_timeout=0.5)) as ex, \
                pytest.raises(RunnerError) as e:
            ex.server_capabilities()
    assert e.value.reason == "remote-unavailable"


def test_tree_of_a_very_deep_path(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    (make_chain(deep, 1200) / "leaf").write_text("bottom")
    try:
        tree = path_tree(str(deep))
        assert key_of(b"bottom") in tree.blobs
        assert len(tree.blobs) == 1201 + 1  # 1201 directories and the file
    finally:
        flatten(deep, tmp_path)


@pytest.fixture
def blob_server() -> Iterator[BlobServer]:
    server = BlobServer()
    yield server
    server.stop()


def _cas(server: BlobServer) -> Iterator[Cas]:
    endpoint = Endpoint.parse(f"grpc://127.0.0.1:{server.port}")
    channel = endpoint.open_channel()
    try:
        yield Cas(endpoint, channel, "", 4 << 20, 30)
    finally:
        channel.close()


OUT = "out"  # the action's output path, relative to its working directory


def _result_with_tree(server: BlobServer, tree: bytes) -> re_pb2.ActionResult:
    k = server.put(tree)
    return re_pb2.ActionResult(output_directories=[
        re_pb2.OutputDirectory(path=OUT, tree_digest=digest(k))])


def _tree(root: re_pb2.Directory, *children: re_pb2.Directory) -> bytes:
    return re_pb2.Tree(root=root, children=list(children)).SerializeToString()


def test_materialise_a_deep_output_tree(blob_server: BlobServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest(
        blob_server.put(b"bottom")))])
    dirs = [leaf]
    for _ in range(1200):
        below = dirs[-1]
        dirs.append(re_pb2.Directory(directories=[re_pb2.DirectoryNode(
            name="d", digest=digest(key_of(below.SerializeToString(deterministic=True))))]))
    result = _result_with_tree(blob_server, _tree(dirs[-1], *dirs[:-1]))
    out = f"{store}/{'a' * 32}-deep"
    try:
        for cas in _cas(blob_server):
            materialise(cas, result, {OUT: out}, str(store))
        with open(os.path.join(out, *["d"] * 1200, "f"), "rb") as f:
            assert f.read() == b"bottom"
    finally:
        flatten(Path(out), tmp_path)


def _bad_trees(server: BlobServer) -> dict[str, bytes]:
    f = re_pb2.FileNode(name="x", digest=digest(server.put(b"x")))
    sub = re_pb2.Directory()
    sub_node = re_pb2.DirectoryNode(name="x", digest=digest(key_of(
        sub.SerializeToString(deterministic=True))))
    return {
        "not-a-tree": b"\xff\xff\xff\xff garbage",
        "dot-dot": _tree(re_pb2.Directory(files=[re_pb2.FileNode(name="..", digest=f.digest)])),
        "slash": _tree(re_pb2.Directory(symlinks=[re_pb2.SymlinkNode(name="../../etc",
                                                                       target="/x")])),
        "twice": _tree(re_pb2.Directory(files=[f], directories=[sub_node]), sub),
        "bad-digest": _tree(re_pb2.Directory(files=[re_pb2.FileNode(
            name="y", digest=re_pb2.Digest(hash="../../x", size_bytes=-1))])),
        "missing-child": _tree(re_pb2.Directory(directories=[sub_node])),
    }


@pytest.mark.parametrize("case", ["not-a-tree", "dot-dot", "slash", "twice", "bad-digest",
                                  "missing-child"])
def test_malformed_output_trees_are_remote_errors(blob_server: BlobServer, tmp_path: Path,
                                                  case: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    before = sorted(os.listdir(tmp_path))
    result = _result_with_tree(blob_server, _bad_trees(blob_server)[case])
    for cas in _cas(blob_server):
        with pytest.raises(RunnerError) as e:
            materialise(cas, result, {OUT: f"{store}/{'a' * 32}-out"}, str(store))
        assert e.value.reason == "remote-error"
    assert os.listdir(store) == [] and sorted(os.listdir(tmp_path)) == before


def test_bad_digests_in_an_action_result(blob_server: BlobServer, tmp_path: Path) -> None:
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(
        path=OUT, digest=re_pb2.Digest(hash="A" * 64, size_bytes=3))])
    for cas in _cas(blob_server):
        with pytest.raises(RunnerError) as e:
            materialise(cas, result, {OUT: f"{tmp_path}/{'a' * 32}-out"}, str(tmp_path))
    assert e.value.reason == "remote-error" and "malformed digest" in e.value.message


def test_malformed_endpoint_urls() -> None:
    for url in ("grpc://[::1", "grpcs://h:99999", "grpc://h:abc"):
        with pytest.raises(RunnerError) as e:
            Endpoint.parse(url)
        assert e.value.reason == "bad-url" and url in e.value.message


def _flaky_server(failures: int, code: str) -> tuple[object, str, list[int]]:
    """A real gRPC server whose one method answers `code` `failures` times, then b"ok"."""
    from concurrent import futures

    import grpc

    calls: list[int] = []

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(1)
        if len(calls) <= failures:
            context.abort(getattr(grpc.StatusCode, code), "busy, try later")
        return b"ok"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Flaky", {"Do": grpc.unary_unary_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"grpc://127.0.0.1:{port}", calls


@pytest.mark.parametrize(("failures", "code", "ok"), [
    (2, "RESOURCE_EXHAUSTED", True),   # a busy server: retried, then it answers
    (2, "ABORTED", True),
    (99, "RESOURCE_EXHAUSTED", False),  # busy for good: one clear error in the end
    (1, "INVALID_ARGUMENT", False),     # a refusal is not retried
])
def test_busy_answers_are_retried_with_backoff(failures: int, code: str, ok: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.remote import rpc

    monkeypatch.setattr(rpc, "BUSY_FIRST_DELAY", 0.001)
    server, url, calls = _flaky_server(failures, code)
    endpoint = Endpoint.parse(url)
    channel = endpoint.open_channel()
    method = channel.unary_unary("/test.Flaky/Do")
    try:
        if ok:
            assert rpc.call(endpoint, "Do", method, b"", timeout=5) == b"ok"
            assert len(calls) == failures + 1
        else:
            with pytest.raises(RunnerError) as e:
                rpc.call(endpoint, "Do", method, b"", timeout=5)
            assert code in str(e.value) and e.value.reason == "remote-error"
            assert len(calls) == (1 if code == "INVALID_ARGUMENT" else rpc.BUSY_RETRIES + 1)
    finally:
        channel.close()
        server.stop(None)  # type: ignore[attr-defined]


def test_keepalive_pings_stay_within_grpc_servers_default_policy() -> None:
    """gRPC servers accept a ping without data at most every 5 minutes by default
    (`grpc.http2.min_ping_interval_without_data_ms`) and end the connection with
    GOAWAY `too_many_pings` after that: buildbox-casd did, 90 s into a long remote build."""
    from runner.remote.endpoint import CHANNEL_OPTIONS

    assert dict(CHANNEL_OPTIONS)["grpc.keepalive_time_ms"] >= 300_000


def test_too_many_pings_is_not_a_dead_endpoint() -> None:
    """A real server with a strict ping policy, a client that pings too often: the call
    fails, but as `remote-error` (the server is up), not `remote-unavailable`."""
    import time
    from concurrent import futures

    import grpc

    from runner.remote import rpc
    from runner.remote.endpoint import CHANNEL_OPTIONS

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        deadline = time.monotonic() + 20  # longer than the GOAWAY takes
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        return b"ok"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
        ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
        ("grpc.http2.max_ping_strikes", 1)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Slow", {"Do": grpc.unary_unary_rpc_method_handler(slow)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    endpoint = Endpoint.parse(f"grpc://127.0.0.1:{port}")
    options = [*(o for o in CHANNEL_OPTIONS if o[0] != "grpc.keepalive_time_ms"),
               ("grpc.keepalive_time_ms", 1000)]
    channel = grpc.insecure_channel(endpoint.target, options=options)
    try:
        with pytest.raises(RunnerError) as e:
            rpc.call(endpoint, "Do", channel.unary_unary("/test.Slow/Do"), b"", timeout=10)
        assert "Too many pings" in e.value.message
        assert e.value.reason == "remote-error"
    finally:
        channel.close()
        server.stop(None)
