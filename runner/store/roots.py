"""GC roots: what the collector must keep, and the lock that keeps roots from racing it.

Roots live under the state dir:

- `gcroots/` holds direct roots: symlinks (at any depth) into the store.
- `gcroots/auto/<base32 sha1 of LINK>` is an indirect root: a symlink to an
  out-link LINK (such as `./result`) that itself points into the store.
  Removing LINK releases the root; the dead entry is removed at the next GC.
- `temproots/<pid>-<suffix>` lists, NUL-terminated, the temporary roots of
  one running process: paths it is building, adding or using right now.

The protocol (`docs/maintenance.md`): the collector holds `gc.lock`
exclusively from reading the roots until it has finished deleting. Anyone
adding a root holds `gc.lock` shared while writing it, so a root is either
written before a collection reads the roots or waits until it has finished.
Callers add a temporary root for a path *before* checking whether it is
valid or creating it. A process holds an exclusive `flock` on its own
temp-roots file for as long as it lives; a file the collector can lock is
left over from a dead process and is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import IO

from runner.errors import RunnerError
from runner.store.layout import GC_LOCK, ROOTS_DIR, TEMP_ROOTS_DIR

# store path -> where its roots come from (link paths or "temporary root of pid N")
Roots = dict[str, set[str]]


def roots_dir(state_dir: str) -> str:
    return os.path.join(state_dir, ROOTS_DIR)


def auto_roots_dir(state_dir: str) -> str:
    return os.path.join(state_dir, ROOTS_DIR, "auto")


# ------------------------------------------------------------------ the GC lock


@contextlib.contextmanager
def gc_lock(state_dir: str, *, exclusive: bool, notice: IO[str] | None = None) -> Iterator[None]:
    """Hold `<state>/gc.lock`: exclusive for collecting, shared for adding roots."""
    path = os.path.join(state_dir, GC_LOCK)
    try:
        os.makedirs(state_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise RunnerError(f"cannot open the GC lock '{path}': {e.strerror}",
                          reason="lock") from None
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if notice is not None:
                print("waiting for the garbage collector lock...", file=notice, flush=True)
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


# ------------------------------------------------------------------ temporary roots


class TempRoots:
    """Temporary roots: paths a concurrent GC must not delete while we use them.

    Each `LocalStore` owns one (`store.temp_roots`), closed with the store. The
    file is created lazily by the first `add_temp_root` and removed by `close()`
    (or, after a crash, by the next collection).
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._fd: int | None = None
        self._file: str | None = None
        self._roots: set[str] = set()
        self._mutex = threading.Lock()

    @property
    def roots(self) -> frozenset[str]:
        return frozenset(self._roots)

    def add_temp_root(self, path: str) -> None:
        """Protect `path` from collection until `close()` (or this process's end).

        Blocks while a collection is running. Call it before checking
        whether `path` is valid, so that the answer stays true.
        """
        self.add_temp_roots((path,))

    def add_temp_roots(self, paths: Iterable[str]) -> None:
        """`add_temp_root` for many paths: one GC-lock round and one write."""
        with self._mutex:
            new = [p for p in dict.fromkeys(paths) if p not in self._roots]
            if not new:
                return
            with gc_lock(self.state_dir, exclusive=False, notice=sys.stderr):
                fd = self._fd if self._fd is not None else self._create()
                _write_all(fd, b"".join(p.encode() + b"\0" for p in new))
            self._roots.update(new)

    def _create(self) -> int:
        # Called under the shared GC lock, so no collector can see the file
        # before we hold its lock and take it for a dead process's leftover.
        directory = os.path.join(self.state_dir, TEMP_ROOTS_DIR)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", dir=directory)
        except OSError as e:
            raise RunnerError(f"cannot create a temporary roots file in '{directory}': "
                              f"{e.strerror}", reason="lock") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd, self._file = fd, name
        return fd

    def close(self) -> None:
        """Drop every temporary root of this object."""
        with self._mutex:
            fd, name = self._fd, self._file
            self._fd = self._file = None
            self._roots.clear()
            if fd is None or name is None:
                return
            with contextlib.suppress(OSError):
                os.unlink(name)
            os.close(fd)


def temp_root_label(pid: int | str) -> str:
    """How `Roots` names the temporary roots of process `pid`."""
    return f"temporary root of process {pid}"


def read_temp_roots(state_dir: str) -> Roots:
    """The temporary roots of all live processes; removes files of dead ones.

    Call with the GC lock held exclusively, so that no root is being added.
    """
    directory = os.path.join(state_dir, TEMP_ROOTS_DIR)
    roots: Roots = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return roots
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                data = _read_all(fd)
            else:  # nobody holds it: its process has ended
                os.unlink(path)
                continue
        finally:
            os.close(fd)
        owner = temp_root_label(name.split('-', 1)[0])
        for entry in data.split(b"\0"):
            if entry:
                roots.setdefault(os.fsdecode(entry), set()).add(owner)
    return roots


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ permanent roots


def indirect_root_name(link: str) -> str:
    import hashlib  # imported by the helpers that need it: a no-op build adds only temp roots

    from runner.store import base32

    return base32.encode(hashlib.sha1(os.path.abspath(link).encode()).digest())


def add_indirect_root(state_dir: str, link: str) -> str:
    """Register the out-link `link` as a root; returns the entry in `gcroots/auto/`."""
    link = os.path.abspath(link)
    root = os.path.join(auto_roots_dir(state_dir), indirect_root_name(link))
    replace_symlink(link, root)
    return root


def add_perm_root(store_dir: str, state_dir: str, store_path: str, link: str) -> str:
    """Create the symlink `link` -> `store_path` and register it as an indirect root.

    Refuses to clobber anything but a symlink into the store. The caller is
    expected to hold a temporary root for `store_path` (it just built or
    checked it); the shared GC lock keeps a running collection from missing
    the new root.
    """
    from runner.store.paths import is_in_store, to_store_path

    link = os.path.abspath(link)
    to_store_path(store_path, store_dir)
    if is_in_store(link, store_dir) or link == store_dir:
        raise RunnerError(f"cannot create a GC root '{link}' inside the store",
                          reason="bad-root")
    if os.path.lexists(link) and not (os.path.islink(link)
                                      and is_in_store(_link_target(link), store_dir)):
        raise RunnerError(f"cannot create symlink '{link}': it already exists and does not "
                          "point into the store", reason="bad-root")
    with gc_lock(state_dir, exclusive=False, notice=sys.stderr):
        replace_symlink(store_path, link)
        add_indirect_root(state_dir, link)
    return link


def replace_symlink(target: str, link: str, what: str = "symlink", *,
                    make_parent: bool = True) -> None:
    """Point `link` at `target` atomically (a fresh symlink renamed over the old one, so an
    old link is never absent); `what` names the link in the one-line error."""
    tmp = f"{link}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        if make_parent:
            os.makedirs(os.path.dirname(link), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as e:
        raise RunnerError(f"cannot create {what} '{link}': {e.strerror}",
                          reason="bad-root") from None


def _link_target(link: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))


def find_roots(store_dir: str, state_dir: str) -> Roots:
    """Permanent roots: store paths reachable by a symlink under `gcroots/`.

    A symlink into the store is a direct root. A symlink elsewhere is an
    indirect root when its target is itself a symlink into the store; when
    its target is gone and it lives in `gcroots/auto/`, it is removed.
    """
    roots: Roots = {}
    _scan(roots_dir(state_dir), store_dir, auto_roots_dir(state_dir) + os.sep, roots)
    return roots


def _scan(path: str, store_dir: str, auto_prefix: str, roots: Roots) -> None:
    from runner.store.paths import is_in_store

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            for name in sorted(os.listdir(path)):
                _scan(os.path.join(path, name), store_dir, auto_prefix, roots)
            return
        if not os.path.islink(path):
            return
        target = _link_target(path)
        if is_in_store(target, store_dir):
            _found(path, target, store_dir, roots)
            return
        if not os.path.lexists(target):
            if path.startswith(auto_prefix):
                os.unlink(path)  # the out-link is gone: the root is released
            return
        if os.path.islink(target):
            final = _link_target(target)
            if is_in_store(final, store_dir):
                _found(target, final, store_dir, roots)
    except OSError as e:
        # Unreadable or vanishing entries are not roots; anything else is a real problem.
        if e.errno not in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
            raise RunnerError(f"cannot read GC root '{path}': {e.strerror}",
                              reason="io") from None


def _found(link: str, target: str, store_dir: str, roots: Roots) -> None:
    from runner.store.paths import to_store_path

    try:
        store_path = to_store_path(target, store_dir)
    except RunnerError:
        return
    roots.setdefault(store_path, set()).add(link)


def all_roots(store_dir: str, state_dir: str) -> Roots:
    """Permanent and temporary roots together; call with the GC lock held exclusively."""
    roots = find_roots(store_dir, state_dir)
    for path, sources in read_temp_roots(state_dir).items():
        roots.setdefault(path, set()).update(sources)
    return roots
