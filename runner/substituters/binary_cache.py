"""A Nix binary cache (`file://` or `http(s)://`) as a substituter."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from runner.errors import RunnerError
from runner.store.hashes import Hash
from runner.store.paths import hash_part
from runner.substituters import cache_info, narinfo
from runner.substituters.base import DownState, Read
from runner.substituters.cache_info import CacheInfo
from runner.substituters.compression import DecompressingReader
from runner.substituters.health import Health, KnownDown, describe_down
from runner.substituters.negative_cache import NegativeCache
from runner.substituters.transport import Stream, Transport

T = TypeVar("T")


class BinaryCache(DownState):
    def __init__(self, transport: Transport, store_dir: str, *, trusted: bool = False,
                 trusted_keys: frozenset[str] = frozenset(),
                 negative: NegativeCache | None = None, priority: int | None = None,
                 health: Health | None = None) -> None:
        super().__init__()
        self.name = transport.url
        self.transport = transport
        self.store_dir = store_dir
        self.trusted = trusted
        self.trusted_keys = trusted_keys
        self._negative = negative
        self._priority = priority
        self._health = health
        self._info: CacheInfo | None = None
        self._info_error: RunnerError | None = None
        self._info_lock = threading.Lock()

    @property
    def priority(self) -> int:
        """The declared priority, else the cache's `Priority` (fetching nix-cache-info)."""
        return self._priority if self._priority is not None else self.cache_info().priority

    def cache_info(self) -> CacheInfo:
        """The cache's `nix-cache-info`, fetched once; a cache for another store dir is refused.

        The first contact of the run. Its failure is kept: lookups waiting on it
        (other threads) give up together instead of each waiting for a timeout.
        """
        with self._info_lock:
            if self._info_error is not None:
                raise self._info_error
            if self._info is None:
                try:
                    self._info = self._first_contact()
                except RunnerError as e:
                    self._info_error = e
                    raise
            return self._info

    def _first_contact(self) -> CacheInfo:
        record = self._health.get(self.name) if self._health is not None else None
        down = record is not None and record.is_down
        if record is not None and down and (record.next_probe or 0) > time.time():
            raise KnownDown(describe_down(record))
        # Known down and due for a probe: one quick try decides.
        transport = self.transport.probe() if down else self.transport
        info = self._watch(lambda: self._read_cache_info(transport))
        if down and self._health is not None:
            self._health.mark_up(self.name)
        return info

    def _watch(self, call: Callable[[], T]) -> T:
        """Run a request; a cache that fails to answer is recorded as down across runs."""
        try:
            return call()
        except RunnerError as e:
            if e.reason == "substituter-down" and self._health is not None:
                self._health.mark_down(self.name, e.message)
            raise

    def _read_cache_info(self, transport: Transport) -> CacheInfo:
        text = transport.read("nix-cache-info")
        if text is None:  # Nix treats a missing file as "same store, defaults"
            info = cache_info.CacheInfo(self.store_dir)
        else:
            info = cache_info.parse(_decode(text, f"{self.name}/nix-cache-info"),
                                    f"{self.name}/nix-cache-info")
        if info.store_dir != self.store_dir:
            raise RunnerError(
                f"binary cache '{self.name}' is for store dir '{info.store_dir}', "
                f"not '{self.store_dir}'", reason="wrong-store-dir")
        return info

    def query(self, path: str) -> narinfo.NarInfo | None:
        self.cache_info()
        part = hash_part(path)
        if self._negative is not None and self._negative.is_missing(self.name, part):
            self._count(False)
            return None
        origin = f"{self.name.rstrip('/')}/{part}.narinfo"
        data = self._watch(lambda: self.transport.read(f"{part}.narinfo"))
        self._count(data is not None)
        if data is None:
            if self._negative is not None:
                self._negative.record_missing(self.name, part)
            return None
        info = narinfo.parse(_decode(data, origin), self.store_dir, origin)
        if info.path != path:
            raise RunnerError(f"narinfo '{origin}' is corrupt: it describes '{info.path}', "
                              f"not '{path}'", reason="bad-narinfo")
        return info

    def open_file(self, rel: str) -> Stream | None:
        """Another file of the cache (a build log, a failure record), None when absent;
        as `query`, it respects and updates the cache's health."""
        self.cache_info()
        return self._watch(lambda: self.transport.open(rel))

    def _count(self, hit: bool) -> None:
        if self._health is not None:
            self._health.count(self.name, hit)

    @contextmanager
    def fetch(self, info: narinfo.NarInfo) -> Iterator[Read]:
        stream = self._watch(lambda: self.transport.open(info.url))
        if stream is None:
            raise RunnerError(f"file '{info.url}' does not exist in binary cache "
                              f"'{self.name}' (the narinfo of '{info.path}' points to it)",
                              reason="missing-nar")
        try:
            raw = _CheckedFile(stream, info, f"{self.name.rstrip('/')}/{info.url}")
            yield DecompressingReader(raw.read, info.compression, info.nar_size).read
        finally:
            stream.close()


class _CheckedFile:
    """Reads the compressed file, checking FileSize and FileHash (when given) at its end."""

    def __init__(self, stream: Stream, info: narinfo.NarInfo, origin: str) -> None:
        self._stream = stream
        self._info = info
        self._origin = origin
        self._size = 0
        self._hasher = hashlib.new(info.file_hash.algo) if info.file_hash else None

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        if data:
            self._size += len(data)
            if self._hasher is not None:
                self._hasher.update(data)
            return data
        expected = self._info.file_size
        if expected is not None and self._size != expected:
            raise RunnerError(f"'{self._origin}' has {self._size} bytes, but the narinfo says "
                              f"{expected}", reason="size-mismatch")
        if self._hasher is not None and self._info.file_hash is not None:
            got = Hash(self._info.file_hash.algo, self._hasher.digest())
            if got != self._info.file_hash:
                raise RunnerError(f"'{self._origin}' has hash {got}, but the narinfo says "
                                  f"{self._info.file_hash}", reason="hash-mismatch")
        return data


def _decode(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunnerError(f"'{origin}' is not UTF-8 text", reason="bad-narinfo") from None
