"""Streaming (de)compression of NAR files: none, xz, zstd, and bzip2 for reading.

Decompression is bounded: a cache states the NAR size, so a stream that
inflates past it is cut off instead of filling the disk.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import zstandard

from runner.errors import RunnerError

_CHUNK = 64 * 1024


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _Identity:
    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return data


class _Zstd:
    def __init__(self) -> None:
        self._obj = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return self._obj.decompress(data)

    @property
    def eof(self) -> bool:
        return bool(self._obj.eof)


def _decompressor(compression: str) -> _Decompressor:
    if compression == "none":
        return _Identity()
    if compression == "xz":
        return lzma.LZMADecompressor()
    if compression == "zstd":
        return _Zstd()
    if compression == "bzip2":
        return bz2.BZ2Decompressor()
    raise RunnerError(f"unsupported compression '{compression}'", reason="bad-narinfo")


class DecompressingReader:
    """`read(n)` over the decompressed stream of `read_raw`; fewer than n bytes only at EOF.

    Raises RunnerError(reason="corrupt-nar") on corrupt input or when the
    output would exceed `limit` bytes.
    """

    def __init__(self, read_raw: Callable[[int], bytes], compression: str, limit: int) -> None:
        self._read_raw = read_raw
        self._dec = _decompressor(compression)
        self._limit = limit
        self._produced = 0
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> None:
        raw = self._read_raw(_CHUNK)
        if not raw:
            self._eof = True
            if not getattr(self._dec, "eof", True):
                raise RunnerError("compressed NAR is truncated", reason="corrupt-nar")
            return
        try:
            out = self._dec.decompress(raw)
        except (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError, ValueError) as e:
            raise RunnerError(f"cannot decompress NAR: {e}", reason="corrupt-nar") from None
        self._produced += len(out)
        if self._produced > self._limit:
            raise RunnerError(f"NAR is larger than the {self._limit} bytes announced",
                              reason="corrupt-nar")
        self._buf += out

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._eof:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def compress(chunks: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """Compress a stream of chunks, yielding compressed chunks."""
    if compression == "none":
        yield from chunks
        return
    if compression == "xz":
        comp: lzma.LZMACompressor | zstandard.ZstdCompressionObj = lzma.LZMACompressor(
            lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    elif compression == "zstd":
        comp = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    else:
        raise RunnerError(f"cannot write compression '{compression}' (use xz, zstd or none)",
                          reason="usage")
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()
