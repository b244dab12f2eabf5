"""Paths arriving over the connection: NARs with their metadata (add-to-store-nar,
add-multiple-to-store) and content-addressed data (add-to-store, add-text-to-store).

Everything is unpacked into a private temp dir in the store while being
hashed, checked against what the client claimed, canonicalised, then renamed
into place under the path lock and registered in one transaction. A client
that vanishes or lies leaves only the temp dir, which is removed: nothing
half-written is ever valid.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable

from runner.daemon import signatures
from runner.errors import RunnerError
from runner.store import nar
from runner.store.canonicalise import canonicalise, remove_tree, rename_tree
from runner.store.hashes import Hash
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks
from runner.store.path_info import PathInfo
from runner.store.paths import (
    make_fixed_output_path,
    make_source_path,
    make_text_path,
    parse_store_path,
)
from runner.store.staging import TempDir, replace_tree
from runner.substituters import content_address
from runner.substituters.narinfo import NarInfo
from runner.substituters.signing import count_valid_signatures, parse_public_keys

Read = Callable[[int], bytes]
_CHUNK = 64 * 1024


class _Hashing:
    """Wraps `read`, hashing and counting what passes through."""

    def __init__(self, read: Read, *algos: str) -> None:
        self._read = read
        self.hashers = {a: hashlib.new(a) for a in algos}
        self.size = 0

    def __call__(self, n: int) -> bytes:
        data = self._read(n)
        self.size += len(data)
        for h in self.hashers.values():
            h.update(data)
        return data

    def hash(self, algo: str) -> Hash:
        return Hash(algo, self.hashers[algo].digest())


def _unpack(read: Read, dest: str) -> None:
    try:
        nar.restore(read, dest)
    except OSError as e:
        raise RunnerError(f"cannot unpack NAR: {e.strerror or e}", reason="io") from None


def check_trust(info: NarInfo, store_dir: str, trusted_keys: Iterable[str],
                require_sigs: bool) -> None:
    """Nix's rule for imports that must be vouched for: content-addressed, or signed by a
    trusted key."""
    if not require_sigs or content_address.vouches_for_path(info, store_dir):
        return
    if count_valid_signatures(info.fingerprint(), info.sigs, parse_public_keys(trusted_keys)):
        return
    raise RunnerError(f"cannot add path '{info.path}' because it lacks a signature by a "
                      "trusted key", reason="unsigned")


def import_nar(store: LocalStore, info: NarInfo, read: Read, *, registration_time: int = 0,
               repair: bool = False) -> None:
    """Make `info.path` valid with the NAR read through `read` (which is consumed exactly).

    The NAR is unpacked even when the path is already valid: the stream must
    be read to its end, and a damaged one is reported either way.
    """
    path = info.path
    parse_store_path(path, store.store_dir)
    store.temp_roots.add_temp_root(path)  # before the validity check (roots.py)
    with TempDir(store.store_dir) as tmp:
        staged = os.path.join(tmp.path, "x")
        hashing = _Hashing(read, info.nar_hash.algo)
        _unpack(hashing, staged)
        got = hashing.hash(info.nar_hash.algo)
        if got != info.nar_hash:
            raise RunnerError(f"hash mismatch importing path '{path}';\n  specified: "
                              f"{info.nar_hash}\n  got:       {got}", reason="hash-mismatch")
        if info.nar_size and hashing.size != info.nar_size:
            raise RunnerError(f"size mismatch importing path '{path}';\n  specified: "
                              f"{info.nar_size}\n  got:       {hashing.size}",
                              reason="size-mismatch")
        if store.is_valid(path) and not repair:
            return
        content_address.check_content(info, staged)
        canonicalise(staged)
        _install(store, staged, PathInfo(path, got, hashing.size, info.references,
                                          info.deriver, registration_time, info.ca),
                 repair=repair, sigs=info.sigs)


def _install(store: LocalStore, staged: str, info: PathInfo, *, repair: bool = False,
             sigs: Iterable[str] = ()) -> None:
    with PathLocks([info.path]):
        valid = store.is_valid(info.path)
        if valid and not repair:
            return  # someone else finished it meanwhile
        missing = sorted(r for r in info.references
                         if r != info.path and not store.is_valid(r))
        if missing:
            raise RunnerError(f"cannot add '{info.path}': its reference '{missing[0]}' is not "
                              "valid", reason="closure")
        try:
            if valid:
                replace_tree(staged, info.path)
            else:
                remove_tree(info.path)  # an unregistered leftover of an interrupted add
                rename_tree(staged, info.path)
        except OSError as e:
            raise RunnerError(f"cannot move '{info.path}' into place: {e.strerror}",
                              reason="io") from None
        try:
            with store.db.transaction():  # the path and its signatures, or neither
                store.register_valid_paths([info])
                signatures.add(store, info.path, sigs)
        except BaseException:
            if not valid:
                remove_tree(info.path)
            raise


def add_text(store: LocalStore, name: str, data: bytes, references: Iterable[str]) -> PathInfo:
    """A text path (`.drv` files and the like) from its bytes, which need not be UTF-8."""
    refs = frozenset(references)
    digest = hashlib.sha256(data).digest()
    path = make_text_path(name, digest, refs, store.store_dir)
    store.temp_roots.add_temp_root(path)
    if not store.is_valid(path):
        with TempDir(store.store_dir) as tmp:
            staged = os.path.join(tmp.path, "x")
            with open(staged, "wb") as f:
                f.write(data)
            canonicalise(staged)
            nar_hash, nar_size = nar.hash_path(staged)
            ca = f"text:{Hash('sha256', digest)}"
            _install(store, staged, PathInfo(path, nar_hash, nar_size, refs, ca=ca))
    info = store.query_path_info(path)
    assert info is not None
    return info


def add_fixed(store: LocalStore, name: str, recursive: bool, algo: str, read: Read,
              references: Iterable[str] = (), *, flat_is_nar: bool = False) -> PathInfo:
    """A fixed-output (source) path from a NAR (`recursive`) or a flat file's bytes.

    `flat_is_nar`: old clients send even a flat file wrapped in a NAR.
    """
    refs = frozenset(references)
    if refs and not (recursive and algo == "sha256"):
        raise RunnerError("only recursive SHA-256 content may have references",
                          reason="bad-ca")
    with TempDir(store.store_dir) as tmp:
        staged = os.path.join(tmp.path, "x")
        if recursive or flat_is_nar:
            hashing = _Hashing(read, algo)
            _unpack(hashing, staged)
            if not recursive:
                if not os.path.isfile(staged) or os.path.islink(staged):
                    raise RunnerError("regular file expected", reason="bad-nar")
                with open(staged, "rb") as f:
                    hashing = _Hashing(f.read, algo)
                    while hashing(_CHUNK):
                        pass
        else:
            hashing = _Hashing(read, algo)
            with open(staged, "wb") as f:
                while data := hashing(_CHUNK):
                    f.write(data)
        ca_hash = hashing.hash(algo)
        if recursive and algo == "sha256":
            path = make_source_path(name, ca_hash.digest, store.store_dir, refs)
        else:
            path = make_fixed_output_path(name, ca_hash, recursive, store.store_dir)
        store.temp_roots.add_temp_root(path)
        if not store.is_valid(path):
            canonicalise(staged)
            nar_hash, nar_size = nar.hash_path(staged)
            ca = f"fixed:{'r:' if recursive else ''}{ca_hash}"
            _install(store, staged, PathInfo(path, nar_hash, nar_size, refs, ca=ca))
    info = store.query_path_info(path)
    assert info is not None
    return info
