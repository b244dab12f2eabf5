"""A small Remote Workers API bot for the tier-2 tests (BuildGrid).

Run with the BuildGrid virtualenv's python (it imports BuildGrid's generated protos, not
runner's): `python tests/buildgrid_bot.py --remote grpc://127.0.0.1:PORT --buildbox-run PATH
[--slots N] [--instance NAME] [-- RUNNER-ARG...]`.

Each slot is a thread with its own bot session of capacity 1, so a finished lease is reported
at once instead of waiting for another slot's long poll. A lease's Action is run with
`buildbox-run --disable-localcas --remote=URL`: buildbox-run fetches the input root from
BuildGrid's CAS, runs the command in bubblewrap and uploads outputs and logs; the
ActionResult goes back in the lease. The bot stops on SIGTERM/SIGINT; if the server goes
away it keeps trying to open a new session (the server may come back on the same port).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from buildgrid._protos.google.rpc import code_pb2
from buildgrid.server.utils.bots import BOT_CAPACITY_KEY

STOP = threading.Event()
POLL_SECONDS = 30  # the long poll's deadline: BuildGrid waits 80% of it for work


def _address(url: str) -> str:
    for prefix in ("grpc://", "http://"):
        if url.startswith(prefix):
            return url[len(prefix):]
    return url


class Slot(threading.Thread):
    def __init__(self, index: int, args: argparse.Namespace) -> None:
        super().__init__(name=f"slot-{index}", daemon=True)
        self.args = args
        self.bot_id = f"{socket.gethostname()}-{os.getpid()}-{index}"
        self.running: subprocess.Popen[bytes] | None = None

    def run(self) -> None:
        while not STOP.is_set():
            channel = grpc.insecure_channel(_address(self.args.remote))
            try:
                self.serve(channel)
            except grpc.RpcError as e:
                if STOP.is_set():
                    return
                log(f"{self.bot_id}: {e.code().name}: {e.details()}; new session in 0.5 s")
                STOP.wait(0.5)
            finally:
                channel.close()

    def session_template(self) -> bots_pb2.BotSession:
        device = worker_pb2.Device(handle=self.bot_id, properties=[
            worker_pb2.Device.Property(key="OSFamily", value="linux"),
            worker_pb2.Device.Property(key="ISA", value="x86-64"),
        ])
        worker = worker_pb2.Worker(devices=[device], configs=[
            worker_pb2.Worker.Config(key=BOT_CAPACITY_KEY, value="1"),
        ])
        return bots_pb2.BotSession(bot_id=self.bot_id, status=bots_pb2.OK, worker=worker)

    def serve(self, channel: grpc.Channel) -> None:
        bots = bots_pb2_grpc.BotsStub(channel)
        session = bots.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=self.args.instance,
                                             bot_session=self.session_template()),
            timeout=POLL_SECONDS)
        done: set[str] = set()
        while not STOP.is_set():
            for lease in session.leases:
                if lease.id in done or lease.state not in (bots_pb2.PENDING, bots_pb2.ACTIVE):
                    continue
                self.execute(channel, lease)
                done.add(lease.id)
            session = bots.UpdateBotSession(
                bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
                timeout=POLL_SECONDS)
            # Leases we completed are acknowledged by their absence.
            done &= {lease.id for lease in session.leases}

    def execute(self, channel: grpc.Channel, lease: bots_pb2.Lease) -> None:
        lease.state = bots_pb2.COMPLETED
        try:
            action = self.action_of(channel, lease)
            result = self.run_action(action)
        except Exception as e:  # reported to the client through the lease's status
            lease.status.code = code_pb2.FAILED_PRECONDITION
            lease.status.message = f"bot {self.bot_id}: {e}"
            log(lease.status.message)
            return
        lease.status.code = code_pb2.OK
        lease.result.Pack(result)

    def action_of(self, channel: grpc.Channel, lease: bots_pb2.Lease) -> re_pb2.Action:
        action = re_pb2.Action()
        if lease.payload.Unpack(action):
            return action
        digest = re_pb2.Digest()
        if not lease.payload.Unpack(digest):
            raise ValueError(f"unknown lease payload {lease.payload.type_url}")
        cas = re_grpc.ContentAddressableStorageStub(channel)
        reply = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
            instance_name=self.args.instance, digests=[digest]), timeout=60)
        blob = reply.responses[0]
        if blob.status.code != code_pb2.OK:
            raise ValueError(f"Action {digest.hash} not in the CAS: {blob.status.message}")
        action.ParseFromString(blob.data)
        return action

    def run_action(self, action: re_pb2.Action) -> re_pb2.ActionResult:
        with tempfile.TemporaryDirectory(dir=self.args.work_dir) as tmp:
            action_file = os.path.join(tmp, "action.bin")
            result_file = os.path.join(tmp, "result.bin")
            workspace = os.path.join(tmp, "ws")
            os.mkdir(workspace)
            with open(action_file, "wb") as f:
                f.write(action.SerializeToString())
            argv = [self.args.buildbox_run, f"--remote={self.args.remote}",
                    f"--instance={self.args.instance}", "--disable-localcas",
                    f"--action={action_file}", f"--action-result={result_file}",
                    f"--workspace-path={workspace}", "--log-level=warning",
                    *self.args.runner_args]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.running = proc
            out, _ = proc.communicate()
            self.running = None
            result = re_pb2.ActionResult()
            if os.path.exists(result_file) and os.path.getsize(result_file) > 0:
                with open(result_file, "rb") as f:
                    result.ParseFromString(f.read())
                return result
            tail = out.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"buildbox-run exited {proc.returncode} without a result: {tail}")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--remote", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--buildbox-run", required=True)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("runner_args", nargs="*")
    args = parser.parse_args(argv)
    slots = [Slot(i, args) for i in range(args.slots)]

    def stop(_sig: int, _frame: Any) -> None:
        STOP.set()
        for slot in slots:
            if slot.running is not None and slot.running.poll() is None:
                slot.running.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in slots:
        slot.start()
    log(f"bot up: {args.slots} slots on {args.remote}")
    while not STOP.is_set():
        STOP.wait(1)
    # Slots blocked in a long poll are daemon threads: leave them.
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
