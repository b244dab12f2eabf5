"""Nix ARchives: the canonical serialisation of a file tree, streamed both ways.

Every field is a string: a little-endian u64 length, the bytes, zero padding
to 8. Directory entries are sorted by name bytes, so a tree has exactly one
NAR. Both directions walk with explicit stacks (deep trees must not hit the
recursion limit) and move file contents in fixed-size chunks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterator

from runner.errors import RunnerError
from runner.store import fdtree
from runner.store.canonicalise import remove_at
from runner.store.hashes import SIZES, Hash

MAGIC = b"nix-archive-1"
CHUNK = 64 * 1024
_MAX_NAME = 255
_MAX_TARGET = 4096
_ZEROS = bytes(8)

PathArg = str | bytes | os.PathLike[str]
Exclude = Callable[[str], bool]  # relpath -> leave it out (see `dump`)


def _pad(n: int) -> int:
    return -n % 8


def _field(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + _ZEROS[: _pad(len(data))]


def _fields(*items: bytes) -> bytes:
    return b"".join(_field(i) for i in items)


def _display(path: bytes) -> str:
    return os.fsdecode(path)


def _io_error(path: bytes, e: OSError) -> RunnerError:
    return RunnerError(f"cannot read '{_display(path)}': {e.strerror or e}", reason="io")


def _file_chunks(fd: int, st: os.stat_result, shown: Callable[[], bytes]) -> Iterator[bytes]:
    """A regular file's node (fd is open for reading; closed here)."""
    executable = bool(st.st_mode & stat.S_IXUSR)
    header = [b"(", b"type", b"regular"] + ([b"executable", b""] if executable else [])
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        yield _fields(*header, b"contents") + struct.pack("<Q", size)
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        if left or f.read(1):
            raise RunnerError(f"file '{_display(shown())}' changed while archiving", reason="io")
    yield _ZEROS[: _pad(size)] + _field(b")")


class _Level:
    """One directory being walked: its sorted entries and how far we are."""

    __slots__ = ("ident", "name", "names", "next", "rel")

    def __init__(self, name: bytes, names: list[bytes], rel: str, ident: tuple[int, int]) -> None:
        self.name = name
        self.names = names
        self.next = 0
        self.rel = rel
        self.ident = ident


def _node(fd: int, name: bytes, st: os.stat_result,
          shown: Callable[[], bytes]) -> Iterator[bytes]:
    """A non-directory node named `name` in the directory `fd`."""
    if stat.S_ISREG(st.st_mode):
        try:
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            raise _io_error(shown(), e) from None
        yield from _file_chunks(file_fd, st, shown)
    elif stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=fd)
        except OSError as e:
            raise _io_error(shown(), e) from None
        yield _fields(b"(", b"type", b"symlink", b"target", os.fsencode(target), b")")
    else:
        raise RunnerError(
            f"file '{_display(shown())}' has an unsupported type (only regular files, "
            "directories and symlinks can be archived)",
            reason="bad-path",
        )


def _pieces(root: bytes, exclude: Exclude | None = None) -> Iterator[bytes]:
    """NAR pieces in order: small framing strings and file-content chunks.

    Directories are walked by descriptor (openat, and `..` to come back up),
    so neither the recursion limit nor PATH_MAX bounds the depth.
    """
    yield _field(MAGIC)
    parent, base = os.path.split(root.rstrip(b"/") or b"/")
    try:
        top = os.open(parent or b".", fdtree.DIR_FLAGS)
    except OSError as e:
        raise _io_error(root, e) from None
    levels: list[_Level] = []
    fd = top

    def shown(name: bytes = b"") -> bytes:
        return os.path.join(root, *(lv.name for lv in levels[1:]), name) if levels else root

    try:
        name, rel = base or b".", ""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as e:
            raise _io_error(root, e) from None
        while True:
            if stat.S_ISDIR(st.st_mode):
                try:
                    child = fdtree.open_dir(name, fd, st, make_readable=False)
                except OSError as e:
                    raise _io_error(shown(name), e) from None
                if fd != top:
                    os.close(fd)
                fd = child
                ident = fdtree.ident(st)
                try:
                    names = sorted(fdtree.byte_names(fd))
                except OSError as e:
                    raise _io_error(shown(name), e) from None
                levels.append(_Level(name, names, rel, ident))
                yield _fields(b"(", b"type", b"directory")
            else:
                yield from _node(fd, name, st, functools.partial(shown, name))
                if levels:
                    yield _field(b")")  # closes the entry
            # Find the next entry to serialise, closing finished directories.
            while levels:
                level = levels[-1]
                if level.next == len(level.names):
                    yield _field(b")")
                    levels.pop()
                    if not levels:
                        break
                    yield _field(b")")  # closes the entry holding it
                    try:
                        fd = fdtree.up(fd, levels[-1].ident)
                    except OSError as e:
                        raise _io_error(shown(), e) from None
                    continue
                name = level.names[level.next]
                level.next += 1
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    raise _io_error(shown(name), e) from None
                if exclude is not None:
                    # gitignore-style relpaths: directories end in '/'
                    rel = level.rel + os.fsdecode(name) + ("/" if stat.S_ISDIR(st.st_mode) else "")
                    if exclude(rel):
                        continue
                yield _fields(b"entry", b"(", b"name", name, b"node")
                break
            if not levels:
                return
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def dump(path: PathArg, exclude: Exclude | None = None) -> Iterator[bytes]:
    """Serialise `path` as a NAR, in chunks of about CHUNK bytes (bounded memory).

    `exclude(relpath)` leaves entries out; relpaths use '/' and directories end
    in '/', so gitignore-style patterns apply (inputs' `exclude:`).
    """
    buffer = bytearray()
    for piece in _pieces(os.fsencode(path), exclude):
        if len(piece) >= CHUNK:
            if buffer:
                yield bytes(buffer)
                buffer.clear()
            yield piece
            continue
        buffer += piece
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def hash_regular(data: bytes) -> tuple[Hash, int]:
    """SHA-256 and size of the NAR of a non-executable file holding `data`."""
    head = _field(MAGIC) + _fields(b"(", b"type", b"regular", b"contents")
    tail = _ZEROS[: _pad(len(data))] + _field(b")")
    hasher = hashlib.sha256(head)
    hasher.update(struct.pack("<Q", len(data)))
    hasher.update(data)
    hasher.update(tail)
    return Hash("sha256", hasher.digest()), len(head) + 8 + len(data) + len(tail)


def hash_path(path: PathArg, algo: str = "sha256",
              exclude: Exclude | None = None) -> tuple[Hash, int]:
    """Hash of the NAR of `path` (SHA-256 unless told) and the NAR's size."""
    if algo not in SIZES:
        raise RunnerError(f"unknown hash algorithm '{algo}'", reason="bad-hash")
    hasher = hashlib.new(algo)
    size = 0
    for chunk in dump(path, exclude):
        hasher.update(chunk)
        size += len(chunk)
    return Hash(algo, hasher.digest()), size


class _Reader:
    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.offset = 0

    def fail(self, what: str) -> RunnerError:
        return RunnerError(f"corrupt NAR at byte {self.offset}: {what}", reason="bad-nar")

    def exact(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            chunk = self._read(min(left, CHUNK))
            if not chunk:
                raise self.fail("unexpected end of archive")
            parts.append(chunk)
            left -= len(chunk)
        self.offset += n
        return b"".join(parts)

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.exact(8))[0]
        return value

    def padding(self, n: int) -> None:
        if self.exact(_pad(n)).strip(b"\0"):
            raise self.fail("non-zero padding")

    def string(self, limit: int) -> bytes:
        n = self.u64()
        if n > limit:
            raise self.fail(f"string of {n} bytes where at most {limit} are allowed")
        data = self.exact(n)
        self.padding(n)
        return data

    def expect(self, token: bytes) -> None:
        at = self.offset
        if self.string(64) != token:
            self.offset = at
            raise self.fail(f"expected '{token.decode()}'")

    def copy(self, fd: int) -> None:
        n = left = self.u64()
        while left:
            chunk = self.exact(min(CHUNK, left))
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
        self.padding(n)


def _check_name(r: _Reader, name: bytes, previous: bytes | None) -> None:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise r.fail(f"invalid file name {name!r}")
    if previous is not None and name <= previous:
        raise r.fail(f"directory entries not sorted or duplicated at {name!r}")


def _restore_regular(r: _Reader, fd: int, name: bytes) -> None:
    tag = r.string(64)
    executable = tag == b"executable"
    if executable:
        r.expect(b"")
        tag = r.string(64)
    if tag != b"contents":
        raise r.fail("expected 'contents'")
    file_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o666, dir_fd=fd)
    try:
        r.copy(file_fd)
        if executable:
            os.fchmod(file_fd, os.fstat(file_fd).st_mode | 0o111)
    except BaseException:
        # We created it (O_EXCL): a truncated file must not outlive the failed restore,
        # also when it is the archive's top node (no tree for `restore` to remove).
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=fd)
        raise
    finally:
        os.close(file_fd)


class _Restoring:
    """Where `restore` is: the open directory and the chain of directories above it."""

    def __init__(self, r: _Reader, top: int, base: bytes, max_rel: int | None) -> None:
        self.r = r
        self.top = top  # the parent of dest, open until the end
        self.fd = top  # the directory new nodes go into
        self.base = base
        self.max_rel = max_rel
        # (name, last entry name seen, identity, length of its path relative to dest)
        self.dirs: list[tuple[bytes, bytes | None, tuple[int, int], int]] = []

    def rel_len(self, name: bytes) -> int:
        return self.dirs[-1][3] + 1 + len(name) if self.dirs else 0

    def enter(self, name: bytes, rel_len: int) -> None:
        os.mkdir(name, 0o777, dir_fd=self.fd)
        st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        child = fdtree.open_dir(name, self.fd, st, make_readable=False)
        if self.fd != self.top:
            os.close(self.fd)
        self.fd = child
        self.dirs.append((name, None, fdtree.ident(st), rel_len))

    def next_entry(self) -> bytes | None:
        """Read up to the next node to create; None once the root is complete."""
        r = self.r
        while self.dirs:
            tag = r.string(64)
            if tag == b")":
                self.dirs.pop()
                if self.dirs:
                    self.fd = fdtree.up(self.fd, self.dirs[-1][2])
                    r.expect(b")")  # closes the entry holding this directory
                continue
            if tag != b"entry":
                raise r.fail("expected 'entry' or ')'")
            r.expect(b"(")
            r.expect(b"name")
            name = r.string(_MAX_NAME)
            dir_name, previous, ident, rel_len = self.dirs[-1]
            _check_name(r, name, previous)
            self.dirs[-1] = (dir_name, name, ident, rel_len)
            r.expect(b"node")
            if self.max_rel is not None and self.rel_len(name) > self.max_rel:
                raise RunnerError(
                    f"NAR holds a path longer than {self.max_rel} bytes below its root "
                    f"(at depth {len(self.dirs)}); such a path would pass PATH_MAX in the store",
                    reason="path-too-long")
            return name
        return None

    def where(self, name: bytes | None = None) -> bytes:
        if not self.dirs:
            return self.base
        return os.path.join(self.base, *(d[0] for d in self.dirs[1:]), *([name] if name else []))

    def close(self) -> None:
        if self.fd != self.top:
            os.close(self.fd)
            self.fd = self.top


def restore(read: Callable[[int], bytes], dest: PathArg, *, max_rel: int | None = None) -> None:
    """Recreate the tree of a NAR read through `read(n)` at `dest` (which must not exist).

    Reads exactly the NAR's bytes, not one more (the caller checks for
    trailing data). Files get ordinary permissions (executables gain +x);
    canonicalising modes and times is the store's job. Nodes are created
    relative to directory descriptors, so depth is bounded by neither the
    recursion limit nor PATH_MAX; `max_rel` refuses (reason "path-too-long")
    a path longer than that many bytes below `dest`. On any error the
    partial tree is removed before raising.
    """
    r = _Reader(read)
    r.expect(MAGIC)
    dest_b = os.fsencode(dest).rstrip(b"/")
    parent, base = os.path.split(dest_b)
    try:
        top = os.open(parent or b".", fdtree.DIR_FLAGS)
    except OSError as e:
        raise RunnerError(f"cannot restore NAR to '{_display(dest_b)}': {e.strerror or e}",
                          reason="io") from None
    state = _Restoring(r, top, dest_b, max_rel)
    name: bytes | None = base
    created = False  # only a tree restore made itself is removed on failure
    try:
        while name is not None:
            r.expect(b"(")
            r.expect(b"type")
            kind = r.string(64)
            if kind == b"directory":
                state.enter(name, state.rel_len(name))
            elif kind == b"regular":
                _restore_regular(r, state.fd, name)
            elif kind == b"symlink":
                r.expect(b"target")
                target = r.string(_MAX_TARGET)
                if not target or b"\0" in target:
                    raise r.fail(f"invalid symlink target {target!r}")
                os.symlink(target, name, dir_fd=state.fd)
            else:
                raise r.fail(f"unknown file type {kind!r}")
            created = True
            if kind != b"directory":
                r.expect(b")")
                if state.dirs:
                    r.expect(b")")  # closes the entry
            name = state.next_entry()
    except BaseException as e:
        where = state.where(name)
        state.close()
        if created:
            with contextlib.suppress(OSError):  # the caller's clean-up tries again
                remove_at(top, os.fsdecode(base))
        os.close(top)
        if isinstance(e, OSError):
            raise RunnerError(f"cannot restore NAR to '{_display(where)}': {e.strerror or e}",
                              reason="io") from None
        raise
    state.close()
    os.close(top)
