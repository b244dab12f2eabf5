"""`runner remote check URL`: what a REAPI server offers, and whether it runs our actions."""

from __future__ import annotations

import argparse
import time

from runner.errors import RunnerError
from runner.remote import capabilities
from runner.remote.executor import RemoteExecutor, RemoteOptions
from runner.settings import Settings

PROBE = ("/bin/sh", "-c", "echo runner-remote-check")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("remote", help="remote execution (REAPI) servers")
    actions = group.add_subparsers(dest="remote_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "check", help="print a server's capabilities and run a trivial action on it")
    p.add_argument("url", metavar="URL", help="grpc://HOST:PORT, grpcs://HOST:PORT or unix:/PATH")
    p.add_argument("--instance", default="", help="REAPI instance name (default: none)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up when the server does not answer within this time")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace, settings: Settings) -> int:
    options = RemoteOptions(instance=args.instance, connect_timeout=args.connect_timeout)
    with RemoteExecutor(args.url, settings, options) as executor:
        caps = executor.server_capabilities()
        print(f"server: {args.url}")
        for line in capabilities.describe(caps):
            print(f"  {line}")
        capabilities.check(args.url, caps)
        system = settings.text("system")
        start = time.monotonic()
        code, log = executor.run_command(PROBE, system)
        took = time.monotonic() - start
    text = log.decode("utf-8", errors="replace").strip()
    if code != 0 or text != "runner-remote-check":
        raise RunnerError(
            f"remote executor '{args.url}' could not run a trivial action "
            f"({' '.join(PROBE)} exited {code}): {text or '(no output)'}",
            reason="remote-check-failed")
    print(f"  trivial action ({system}): ok in {took * 1000:.0f} ms")
    return 0
