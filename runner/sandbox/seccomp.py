"""A seccomp filter that denies AF_UNIX sockets (fixed-output builds; docs/security.md).

A fixed-output build shares the host's network namespace, so it could reach
every abstract Unix socket of the host and of other fixed-output builds, and
pass descriptors over them (CVE-2024-27297). Abstract sockets belong to the
network namespace, and a private one would cut the fetchers off; so instead
the builder may not create Unix sockets at all: `socket(AF_UNIX, …)` fails
with EAFNOSUPPORT. `socketpair` stays allowed (it connects only the two ends
it creates). `io_uring_setup` fails with ENOSYS, as io_uring can create
sockets without the `socket` call. Syscalls of another ABI (32-bit programs,
x32) fail with ENOSYS: their socket calls could not be checked.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from runner.sandbox import libc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
AF_UNIX = 1
_X32_BIT = 0x40000000
NR_IO_URING_SETUP = 425  # the same on every architecture since 5.1

# machine: (AUDIT_ARCH_*, socket syscall number)
_ARCHES = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198),
           "riscv64": (0xC00000F3, 198)}

_LD_W_ABS, _JEQ_K, _JSET_K, _RET_K = 0x20, 0x15, 0x45, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data (args: little-endian low half)


def supported() -> bool:
    return platform.machine() in _ARCHES


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes:
    arch, nr_socket = _ARCHES[platform.machine()]
    return b"".join([
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ_K, arch, jt=1),  # another ABI: deny everything
        _insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        _insn(_LD_W_ABS, _OFF_NR),
        _insn(_JSET_K, _X32_BIT, jf=1),
        _insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        _insn(_JEQ_K, NR_IO_URING_SETUP, jf=1),
        _insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        _insn(_JEQ_K, nr_socket, jf=3),
        _insn(_LD_W_ABS, _OFF_ARG0),
        _insn(_JEQ_K, AF_UNIX, jf=1),
        _insn(_RET_K, RET_ERRNO | errno.EAFNOSUPPORT),
        _insn(_RET_K, RET_ALLOW),
    ])


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def deny_unix_sockets() -> None:
    """Install the filter on this thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    if not supported():
        raise OSError(0, f"seccomp: no filter for {platform.machine()}")
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.prctl_ptr(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
