"""The root's steps (`root.compile_root`) run in Python: the Python way's builder.

`_spawn.c` runs the same list in C after its clone; here `child.py` runs it in
the forked builder, before its exec, so both ways assemble the same root. Only
the root's steps are here (the process set-up around them stays in
`child.enter`). Errors are `OSError`s naming the call and path, as libc.py's.
"""

from __future__ import annotations

import os

from runner.sandbox import libc, trace
from runner.sandbox.mounts import remount, seal_submounts
from runner.sandbox.root import (
    BINDS,
    CHDIR,
    IDENT,
    MKDIR,
    MKDIRS,
    MOUNT,
    MOUNT_ELSE,
    PIVOT,
    REMOUNT,
    SEAL,
    STUBS,
    SYMLINK,
    TOUCH,
    TRACE,
    UMOUNT,
    WRITE,
    Arg,
)

MOUNTINFO = "/self/mountinfo"


def run(ops: list[tuple[int, tuple[Arg, ...]]]) -> None:
    i = 0
    while i < len(ops):
        op, a = ops[i]
        if op == MOUNT_ELSE:
            try:
                _mount(a[1:])
            except OSError:
                pass
            else:
                i += _int(a[0])
        else:
            _step(op, a)
        i += 1


def _step(op: int, a: tuple[Arg, ...]) -> None:
    if op == MOUNT:
        _mount(a)
    elif op == MKDIRS:
        os.makedirs(_str(a[0]), _int(a[1]), exist_ok=True)
    elif op == MKDIR:
        os.mkdir(_str(a[0]), _int(a[1]))
    elif op == TOUCH:
        os.makedirs(os.path.dirname(_str(a[0])), exist_ok=True)
        os.close(os.open(_str(a[0]), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    elif op == WRITE:
        os.makedirs(os.path.dirname(_str(a[0])), exist_ok=True)
        fd = os.open(_str(a[0]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _str(a[1]).encode())
        finally:
            os.close(fd)
    elif op == SYMLINK:
        os.makedirs(os.path.dirname(_str(a[1])), exist_ok=True)
        os.symlink(_str(a[0]), _str(a[1]))
    elif op == IDENT:
        st = os.stat(_str(a[0]))
        if (st.st_dev, st.st_ino) != (a[1], a[2]):  # swapped since it was checked
            raise OSError(0, _str(a[3]))
    elif op == REMOUNT:
        remount(_str(a[0]), readonly=bool(a[1]), nodev=bool(a[2]))
    elif op == SEAL:
        mountinfo = _str(a[0])
        assert mountinfo.endswith(MOUNTINFO)
        seal_submounts([_str(x) for x in a[1:]], mountinfo[: -len(MOUNTINFO)])
    elif op == PIVOT:
        libc.pivot_root(_str(a[0]), _str(a[1]))
    elif op == CHDIR:
        os.chdir(_str(a[0]))
    elif op == UMOUNT:
        libc.umount2(_str(a[0]), _int(a[1]))
    elif op == STUBS:
        _stubs(_str(a[0]), _str(a[1]))
    elif op == BINDS:
        _binds(_str(a[0]), _str(a[1]), _str(a[2]))
    elif op == TRACE:
        trace.mark(_str(a[0]))
    else:
        raise OSError(0, f"sandbox step {op} is not one of the root's")


def _mount(a: tuple[Arg, ...]) -> None:
    libc.mount(_str(a[0]) or None, _str(a[1]), _str(a[2]) or None, _int(a[3]),
               _str(a[4]) or None)


def _entries(entries: str) -> list[tuple[str, str, str]]:
    """(kind, name, symlink target or "") of root.py's NUL-separated input list."""
    fields = entries.split("\0")
    found, i = [], 0
    while i < len(fields) and fields[i]:
        kind, name = fields[i][0], fields[i][1:]
        target = fields[i + 1] if kind == "l" else ""
        found.append((kind, name, target))
        i += 2 if kind == "l" else 1
    return found


def _stubs(where: str, entries: str) -> None:
    for kind, name, target in _entries(entries):
        if kind == "d":
            os.mkdir(f"{where}/{name}", 0o755)
        elif kind == "f":
            os.close(os.open(f"{where}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        else:
            os.symlink(target, f"{where}/{name}")


def _binds(source: str, target: str, entries: str) -> None:
    for kind, name, _ in _entries(entries):
        if kind != "l":
            libc.mount(f"{source}/{name}", f"{target}/{name}", None,
                       libc.MS_BIND | libc.MS_REC)


def _str(a: Arg) -> str:
    if isinstance(a, bytes):
        return os.fsdecode(a)
    assert isinstance(a, str)
    return a


def _int(a: Arg) -> int:
    assert isinstance(a, int)
    return a
