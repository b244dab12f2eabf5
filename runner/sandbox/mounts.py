"""Per-mount flags: read-only remounts, and sealing the host submounts a recursive bind brings."""

from __future__ import annotations

import os
import re

from runner.sandbox import libc

_OCTAL = re.compile(rb"\\([0-7]{3})")


def remount(target: str, *, readonly: bool, nodev: bool) -> None:
    """Set per-mount flags, keeping those a user namespace may not drop."""
    have = os.statvfs(target).f_flag
    flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_NOSUID
    if readonly or have & libc.ST_RDONLY:
        flags |= libc.MS_RDONLY
    if nodev or have & libc.ST_NODEV:
        flags |= libc.MS_NODEV
    if have & libc.ST_NOEXEC:
        flags |= libc.MS_NOEXEC
    if have & libc.ST_NOATIME:
        flags |= libc.MS_NOATIME
    if have & libc.ST_NODIRATIME:
        flags |= libc.MS_NODIRATIME
    if have & libc.ST_RELATIME:
        flags |= libc.MS_RELATIME
    elif not have & libc.ST_NOATIME:
        flags |= libc.MS_STRICTATIME
    libc.mount(None, target, None, flags)


def seal_submounts(readonly_targets: list[str], proc: str) -> None:
    """Recursive binds bring host submounts along writable; make them read-only too.
    `proc`: where the host's procfs is reachable now (the host root may be at /old)."""
    with open(proc + "/self/mountinfo", "rb") as f:
        points = [_unescape(line.split()[4]) for line in f]
    targets = set(readonly_targets)
    for point in points:
        parent = point
        while (cut := parent.rfind("/")) > 0:
            parent = parent[:cut]
            if parent in targets:
                remount(point, readonly=True, nodev=True)
                break


def _unescape(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))
