"""Who is connected (`SO_PEERCRED`) and what they may do: Nix's `allowed-users` and
`trusted-users` lists (`*` for everyone, a user name, or `@group`)."""

from __future__ import annotations

import grp
import pwd
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str  # the uid's name, or the number when it has none
    group: str
    trusted: bool = False

    def describe(self) -> str:
        return f"pid {self.pid}, user {self.user}" + (" (trusted)" if self.trusted else "")


def peer_of(sock: socket.socket) -> Peer:
    """The credentials the kernel recorded for the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, _user_name(uid), _group_name(gid))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def matches(peer: Peer, entries: Sequence[str]) -> bool:
    """Whether `peer` is in a Nix user list: `*`, its user name, or `@group` it belongs to
    (primary group, or a listed member of the group)."""
    for entry in entries:
        if entry in ("*", peer.user):
            return True
        if entry.startswith("@"):
            name = entry[1:]
            if name == peer.group:
                return True
            try:
                if peer.user in grp.getgrnam(name).gr_mem:
                    return True
            except KeyError:
                continue
    return False


def admit(peer: Peer, allowed_users: Sequence[str], trusted_users: Sequence[str]) -> Peer | str:
    """The peer with its trust decided, or why it may not connect."""
    trusted = matches(peer, trusted_users)
    if not trusted and not matches(peer, allowed_users):
        return (f"user '{peer.user}' is not allowed to connect to the runner daemon "
                "(setting allowed-users)")
    return Peer(peer.pid, peer.uid, peer.gid, peer.user, peer.group, trusted)
