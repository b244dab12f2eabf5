"""ctypes bindings for the Linux calls Python lacks before 3.12.

Only what the sandbox needs: unshare, mount, umount2, pivot_root, setdomainname
and prctl. Each wrapper raises `OSError` naming the call and its argument, so a
failed sandbox set-up says which step failed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# statvfs f_flag bits (they differ from the MS_* values for atime).
ST_RDONLY = 1
ST_NOSUID = 2
ST_NODEV = 4
ST_NOEXEC = 8
ST_NOATIME = 1024
ST_NODIRATIME = 2048
ST_RELATIME = 4096

# rt_sigaction, called raw: glibc's sigaction refuses its own signals 32 and 33.
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134, "i686": 174, "ppc64le": 173}
_KERNEL_SIGACTION_SIZE = 32  # handler, flags, restorer, mask: all zero is SIG_DFL everywhere

# pivot_root has no glibc wrapper before 2.34.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "i686": 217, "ppc64le": 203}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Enter the namespace `fd` refers to (os.setns is 3.12+)."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    what = f"mount {source} on {target}" if source else f"mount {target}"
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), what)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    what = f"pivot_root {new_root}"
    if hasattr(_libc, "pivot_root"):
        _check(_libc.pivot_root(_b(new_root), _b(put_old)), what)
        return
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"{what}: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), what)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def prctl_ptr(option: int, arg: int, pointer: int) -> None:
    """prctl whose third argument is an address (PR_SET_SECCOMP's filter)."""
    _check(_libc.prctl(option, arg, pointer, 0, 0), f"prctl {option}")


def default_all_signals() -> None:
    """Every signal back to its default action, glibc's reserved ones too: an ignored
    signal stays ignored across exec, and whatever runner (or a library in it)
    ignores is not the builder's to inherit."""
    number = _SYS_RT_SIGACTION.get(platform.machine())
    if number is None:
        raise OSError(0, f"rt_sigaction: unknown syscall number on {platform.machine()}")
    default = ctypes.create_string_buffer(_KERNEL_SIGACTION_SIZE)
    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            _libc.syscall(number, sig, default, None, 8)
