"""Filling a binary cache from the local store (`runner copy --to`).

Each path is written as `nar/<filehash>.nar[.xz|.zst]` and then its
`<hashpart>.narinfo`, references before referrers: a reader that sees a
narinfo finds its NAR, and a cache interrupted half-way still holds only
complete closures.
"""

from __future__ import annotations

import graphlib
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from runner.errors import RunnerError, raise_not_valid
from runner.store import nar
from runner.store.hashes import Hash
from runner.store.path_info import PathInfo
from runner.store.paths import hash_part
from runner.substituters import cache_info
from runner.substituters.compression import compress
from runner.substituters.narinfo import NarInfo, nar_url
from runner.substituters.signing import SecretKey
from runner.substituters.transport import Transport

_CHUNK = 1024 * 1024


class SourceStore(Protocol):
    store_dir: str

    def query_path_info(self, path: str) -> PathInfo | None: ...
    def compute_closure(self, paths: Iterable[str]) -> set[str]: ...


def check_cache_info(transport: Transport, store_dir: str) -> bool:
    """Refuse a cache made for another store dir; False when it has no `nix-cache-info`
    yet (nothing is written here)."""
    if not transport.exists("nix-cache-info"):
        return False
    text = transport.read("nix-cache-info")
    if text is None:
        return False
    info = cache_info.parse(text.decode("utf-8", "replace"), f"{transport.url}/nix-cache-info")
    if info.store_dir != store_dir:
        raise RunnerError(f"binary cache '{transport.url}' is for store dir '{info.store_dir}', "
                          f"not '{store_dir}'", reason="store-mismatch")
    return True


def ensure_cache_info(transport: Transport, store_dir: str) -> None:
    """Create `nix-cache-info` in a new cache; refuse a cache made for another store dir."""
    if not check_cache_info(transport, store_dir):
        transport.create()
        transport.write("nix-cache-info", [cache_info.CacheInfo(store_dir).to_text().encode()])


def copy_to_cache(store: SourceStore, paths: Iterable[str], transport: Transport, *,
                  compression: str = "xz", sign_key: SecretKey | None = None,
                  tmp_dir: str | None = None) -> list[str]:
    """Write the closure of `paths` into the cache; returns the paths newly written.

    Everything that can be checked up front (every path valid, the cache for this
    store dir) is checked before the first write, so a refused copy writes nothing,
    not even the cache's directory or `nix-cache-info`.
    """
    infos: dict[str, PathInfo] = {}
    for path in store.compute_closure(paths):
        info = store.query_path_info(path)
        if info is None:
            raise_not_valid(path)
        infos[path] = info
    has_info = check_cache_info(transport, store.store_dir)
    order = graphlib.TopologicalSorter(
        {p: sorted(i.references - {p}) for p, i in infos.items()}).static_order()
    written = []

    def first_write() -> None:
        nonlocal has_info
        if not has_info:
            ensure_cache_info(transport, store.store_dir)
            has_info = True

    for path in order:
        if transport.exists(f"{hash_part(path)}.narinfo"):
            continue
        write_path(infos[path], transport, compression=compression, sign_key=sign_key,
                   tmp_dir=tmp_dir, before_write=first_write)
        written.append(path)
    return written


def write_path(info: PathInfo, transport: Transport, *, compression: str,
               sign_key: SecretKey | None, tmp_dir: str | None = None,
               before_write: Callable[[], None] | None = None) -> NarInfo:
    """Compress one path's NAR into the cache, then publish its (signed) narinfo.

    The NAR is staged (and checked against the store's record) first;
    `before_write` runs once that succeeded, before anything is written."""
    with tempfile.TemporaryFile(dir=tmp_dir) as staged:
        file_hasher = hashlib.sha256()
        file_size = 0
        for chunk in compress(_verified_dump(info), compression):
            staged.write(chunk)
            file_hasher.update(chunk)
            file_size += len(chunk)
        file_hash = Hash("sha256", file_hasher.digest())
        url = nar_url(file_hash, compression)
        if before_write is not None:
            before_write()
        if not transport.exists(url):
            staged.seek(0)
            transport.write(url, iter(lambda: staged.read(_CHUNK), b""))
    narinfo = NarInfo(
        path=info.path, url=url, nar_hash=info.nar_hash, nar_size=info.nar_size,
        compression=compression, file_hash=file_hash, file_size=file_size,
        references=info.references, deriver=info.deriver, ca=info.ca)
    if sign_key is not None:
        narinfo = narinfo.signed(sign_key)
    transport.write(f"{hash_part(info.path)}.narinfo", [narinfo.to_text().encode()])
    return narinfo


def _verified_dump(info: PathInfo) -> Iterator[bytes]:
    """The path's NAR, checked against the store's record so a damaged path is not spread."""
    hasher = hashlib.new(info.nar_hash.algo)
    size = 0
    try:
        for chunk in nar.dump(info.path):
            hasher.update(chunk)
            size += len(chunk)
            yield chunk
    except OSError as e:
        raise RunnerError(f"cannot read '{info.path}': {e.strerror}", reason="io") from None
    if size != info.nar_size or hasher.digest() != info.nar_hash.digest:
        raise RunnerError(f"store path '{info.path}' was modified since it was added (its NAR "
                          "hash no longer matches the database); run a store repair",
                          reason="corrupt-store")
