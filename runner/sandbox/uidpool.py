"""One host uid per concurrent sandboxed build (as root), locked across processes.

Builders of different builds must never share a uid: a process may ptrace,
`pidfd_getfd` or read `/proc/PID/mem` of any process of its own uid (and the
kernel makes a builder dumpable again at exec), so two builds under one uid
could take each other's descriptors and write each other's outputs
(docs/security.md, class 2). As Nix's build users, uids `FIRST_UID …
FIRST_UID + COUNT - 1` (group `GID`) are a pool shared by every runner process
on the host, whatever its store: a uid is taken by an exclusive `flock` on
`LOCK_DIR/<uid>`, held by runner until the build's process is reaped, and
released by closing it (the kernel releases it when runner dies). When every uid
is taken, a build waits for one as Nix's does (`try_acquire`/`any_free`; the build
goal gives back its build slot and output locks meanwhile). Without root there is
no pool: the builder is the invoking user in a user namespace.

With `build-users-group` set (Nix's setting), the pool is that group's members
(their uids, the group's gid) instead, locked the same way (docs/daemon.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import stat
from dataclasses import dataclass, field

from runner.errors import RunnerError

FIRST_UID = 30001
GID = 30000
COUNT = 128
# Where the locks live: /run (a tmpfs cleared at boot) where there is one.
LOCK_DIR = "/run/runner-build-users" if os.path.isdir("/run") else "/tmp/runner-build-users"


@dataclass
class Lease:
    uid: int
    _fd: int = field(repr=False)
    gid: int = GID

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _lock_dir() -> int:
    """The lock directory, root's and 0700 (checked: never one someone else made)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(LOCK_DIR, 0o700)
    fd = os.open(LOCK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise RunnerError(f"sandbox: '{LOCK_DIR}' must be root's with mode 0700",
                          reason="sandbox-setup")
    return fd


def group_pool(group: str) -> tuple[list[int], int]:
    """The uids of `group`'s members and its gid: the build users Nix's
    `build-users-group` names."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        raise RunnerError(f"the group '{group}' specified in 'build-users-group' does not "
                          "exist", reason="sandbox-setup") from None
    uids = set()
    for member in entry.gr_mem:
        try:
            uids.add(pwd.getpwnam(member).pw_uid)
        except KeyError:
            continue
    if 0 in uids:
        raise RunnerError(f"the build users group '{group}' may not contain root",
                          reason="sandbox-setup")
    if not uids:
        raise RunnerError(f"the build users group '{group}' has no members",
                          reason="sandbox-setup")
    return sorted(uids), entry.gr_gid


def acquire(group: str = "") -> Lease:
    """A free build uid, locked until `release()`; an error when all are in use.
    `group`: the build users are its members (build-users-group), not the fixed pool."""
    lease = try_acquire(group)
    if lease is None:
        raise RunnerError(f"sandbox: all {pool_size(group)} build users are in use",
                          reason="sandbox-setup")
    return lease


def pool_size(group: str = "") -> int:
    return len(_pool(group)[0])


def _pool(group: str) -> tuple[list[int], int]:
    return group_pool(group) if group else ([FIRST_UID + i for i in range(COUNT)], GID)


def try_acquire(group: str = "") -> Lease | None:
    """As `acquire`, but None when every build user is busy: the caller waits (as Nix
    does) and tries again; `any_free` tells it when that may succeed."""
    uids, gid = _pool(group)
    try:
        dir_fd = _lock_dir()
    except OSError as e:
        raise RunnerError(f"sandbox: cannot use '{LOCK_DIR}': {e.strerror}",
                          reason="sandbox-setup") from None
    try:
        start = os.getpid() % len(uids)  # spread concurrent runs over the pool
        for i in range(len(uids)):
            uid = uids[(start + i) % len(uids)]
            fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return Lease(uid, fd, gid)
    finally:
        os.close(dir_fd)
    return None


def any_free(group: str = "") -> bool:
    """Is some build user free right now? (Takes one and gives it back at once.)"""
    lease = try_acquire(group)
    if lease is None:
        return False
    lease.release()
    return True
