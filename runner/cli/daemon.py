"""`runner daemon`: serve the store to other users over Nix's worker protocol
(docs/daemon.md)."""

from __future__ import annotations

import argparse
import os
import socket

from runner.errors import RunnerError
from runner.settings import Settings

_SD_LISTEN_FDS_START = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("daemon", help="serve the store over Nix's worker protocol")
    p.add_argument("--socket", metavar="PATH",
                   help="Unix socket to listen on (default: <state>/daemon-socket/socket)")
    p.add_argument("--stdio", action="store_true",
                   help="serve one connection on stdin/stdout (for ssh-ng:// clients)")
    p.set_defaults(func=_daemon)


def _systemd_socket() -> list[socket.socket]:
    """The socket systemd passed (socket activation), if any."""
    fds = os.environ.get("LISTEN_FDS")
    if fds is None:
        return []
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or fds != "1":
        raise RunnerError("unexpected systemd environment variables (LISTEN_PID/LISTEN_FDS); "
                          "the daemon takes exactly one socket", reason="usage")
    sock = socket.socket(fileno=_SD_LISTEN_FDS_START)
    sock.set_inheritable(False)
    return [sock]


def _daemon(args: argparse.Namespace, settings: Settings) -> int:
    from runner.daemon.server import run_daemon, run_stdio

    if args.stdio:
        return run_stdio(settings)
    inherited = [] if args.socket else _systemd_socket()
    return run_daemon(settings, args.socket, inherited=inherited)
