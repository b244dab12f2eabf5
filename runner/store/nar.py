"""Nix ARchives: the canonical serialisation of a file tree, streamed both ways.

Every field is a string: a little-endian u64 length, the bytes, zero padding
to 8. Directory entries are sorted by name bytes, so a tree has exactly one
NAR. Both directions walk with explicit stacks (deep trees must not hit the
recursion limit) and move file contents in fixed-size chunks.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterator

from runner.errors import RunnerError
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


def _file_chunks(path: bytes, st: os.stat_result) -> Iterator[bytes]:
    executable = bool(st.st_mode & stat.S_IXUSR)
    header = [b"(", b"type", b"regular"] + ([b"executable", b""] if executable else [])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise _io_error(path, e) from None
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
            raise RunnerError(f"file '{_display(path)}' changed while archiving", reason="io")
    yield _ZEROS[: _pad(size)] + _field(b")")


def _pieces(root: bytes, exclude: Exclude | None = None) -> Iterator[bytes]:
    """NAR pieces in order: small framing strings and file-content chunks."""
    yield _field(MAGIC)
    # A stack of pending work: a path to serialise (with its path relative to the
    # root, for `exclude`) or, with `rel` None, literal bytes to emit.
    stack: list[tuple[bytes, str | None]] = [(root, "")]
    while stack:
        item, rel = stack.pop()
        if rel is None:
            yield item
            continue
        try:
            st = os.lstat(item)
        except OSError as e:
            raise _io_error(item, e) from None
        if stat.S_ISREG(st.st_mode):
            yield from _file_chunks(item, st)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(item)
            except OSError as e:
                raise _io_error(item, e) from None
            yield _fields(b"(", b"type", b"symlink", b"target", target, b")")
        elif stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(item))
            except OSError as e:
                raise _io_error(item, e) from None
            yield _fields(b"(", b"type", b"directory")
            stack.append((_field(b")"), None))
            for name in reversed(names):
                child = os.path.join(item, name)
                child_rel = rel + os.fsdecode(name)
                if exclude is not None:
                    if os.path.isdir(child) and not os.path.islink(child):
                        child_rel += "/"  # gitignore-style: directories end in '/'
                    if exclude(child_rel):
                        continue
                stack.append((_field(b")"), None))
                stack.append((child, child_rel))
                stack.append((_fields(b"entry", b"(", b"name", name, b"node"), None))
        else:
            raise RunnerError(
                f"file '{_display(item)}' has an unsupported type (only regular files, "
                "directories and symlinks can be archived)",
                reason="bad-path",
            )


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


def _restore_regular(r: _Reader, path: bytes) -> None:
    tag = r.string(64)
    executable = tag == b"executable"
    if executable:
        r.expect(b"")
        tag = r.string(64)
    if tag != b"contents":
        raise r.fail("expected 'contents'")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        r.copy(fd)
        if executable:
            os.fchmod(fd, os.fstat(fd).st_mode | 0o111)
    finally:
        os.close(fd)


def _next_entry(r: _Reader, dirs: list[tuple[bytes, list[bytes]]]) -> bytes | None:
    """Read up to the next node to create; None once the root is complete."""
    while dirs:
        directory, seen = dirs[-1]
        tag = r.string(64)
        if tag == b")":
            dirs.pop()
            if dirs:
                r.expect(b")")  # closes the entry holding this directory
            continue
        if tag != b"entry":
            raise r.fail("expected 'entry' or ')'")
        r.expect(b"(")
        r.expect(b"name")
        name = r.string(_MAX_NAME)
        _check_name(r, name, seen[-1] if seen else None)
        seen[:] = [name]
        r.expect(b"node")
        return os.path.join(directory, name)
    return None


def restore(read: Callable[[int], bytes], dest: PathArg) -> None:
    """Recreate the tree of a NAR read through `read(n)` at `dest` (which must not exist).

    Files get ordinary permissions (executables gain +x); canonicalising
    modes and times is the store's job. On error, a partial tree is left
    for the caller to remove.
    """
    r = _Reader(read)
    r.expect(MAGIC)
    dirs: list[tuple[bytes, list[bytes]]] = []
    path: bytes | None = os.fsencode(dest)
    try:
        while path is not None:
            r.expect(b"(")
            r.expect(b"type")
            kind = r.string(64)
            if kind == b"directory":
                os.mkdir(path, 0o777)
                dirs.append((path, []))
            elif kind == b"regular":
                _restore_regular(r, path)
            elif kind == b"symlink":
                r.expect(b"target")
                target = r.string(_MAX_TARGET)
                if not target or b"\0" in target:
                    raise r.fail(f"invalid symlink target {target!r}")
                os.symlink(target, path)
            else:
                raise r.fail(f"unknown file type {kind!r}")
            if kind != b"directory":
                r.expect(b")")
                if dirs:
                    r.expect(b")")  # closes the entry
            path = _next_entry(r, dirs)
    except OSError as e:
        where = _display(e.filename) if isinstance(e.filename, bytes) else str(e.filename)
        raise RunnerError(
            f"cannot restore NAR to '{where}': {e.strerror or e}", reason="io"
        ) from None
