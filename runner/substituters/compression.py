"""Streaming (de)compression of NAR files: none, xz, zstd, and bzip2 for reading.

Decompression is bounded twice over. Memory: every decompressor call
produces at most `_OUT` bytes (lzma/bz2 `max_length`, zstd's stream reader),
so a small "bomb" (2 GiB of zeros is 65 KB of zstd) never inflates in one
piece. Size: a cache states the NAR size, and a stream that inflates past
it is cut off at once instead of being read (or unpacked) to the end.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol, cast

import zstandard

from runner.errors import RunnerError

_CHUNK = 64 * 1024  # compressed bytes read at a time
_OUT = 1024 * 1024  # most decompressed bytes one decompressor call may produce
# zstd frames name their window size; zstd's own default limit (128 MiB) keeps every
# cache Nix can write readable (Nix's default level uses a 2 MiB window).
_ZSTD_MAX_WINDOW = 1 << 27
_ERRORS = (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError, ValueError)
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # low 4 bits are free


def _corrupt(why: str) -> RunnerError:
    return RunnerError(f"cannot decompress NAR: {why}", reason="bad-nar")


def _truncated() -> RunnerError:
    return RunnerError("compressed NAR is truncated", reason="bad-nar")


class _Decoder(Protocol):
    def next(self) -> bytes:
        """The next piece of output (at most `_OUT` bytes); b"" only at a complete end."""
        ...


class _Identity:
    def __init__(self, read_raw: Callable[[int], bytes]) -> None:
        self._read_raw = read_raw

    def next(self) -> bytes:
        return self._read_raw(_OUT)


class _Std:
    """lzma and bz2: `decompress(data, max_length)` keeps unconsumed input inside."""

    def __init__(self, dec: lzma.LZMADecompressor | bz2.BZ2Decompressor,
                 read_raw: Callable[[int], bytes]) -> None:
        self._dec = dec
        self._read_raw = read_raw

    def next(self) -> bytes:
        while True:
            if self._dec.eof:
                # Anything after the end of the stream is corrupt; reading to the raw
                # end also lets the caller's FileSize/FileHash check run.
                if self._dec.unused_data or self._read_raw(_CHUNK):
                    raise _corrupt("data after the end of the compressed stream")
                return b""
            raw = b""
            if self._dec.needs_input:
                raw = self._read_raw(_CHUNK)
                if not raw:
                    raise _truncated()
            try:
                out = self._dec.decompress(raw, _OUT)
            except _ERRORS as e:
                raise _corrupt(str(e)) from None
            if out:
                return out


class _ZstdFrames:
    """Follows the zstd frame structure (headers and block sizes only, no decoding) so that
    a stream cut short is told apart from a complete one: zstandard's stream reader
    simply ends early on truncated input."""

    _FCS_SIZES = (0, 2, 4, 8)
    _DICT_SIZES = (0, 1, 2, 4)

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 4
        self._state = "magic"
        self._skip = 0
        self._checksum = False
        self._frames = 0

    @property
    def complete(self) -> bool:
        return self._frames > 0 and self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self._skip:
                n = min(self._skip, len(data) - pos)
                self._skip -= n
                pos += n
                continue
            take = min(self._need - len(self._buf), len(data) - pos)
            self._buf += data[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                head = bytes(self._buf)
                self._buf.clear()
                self._step(head)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _step(self, head: bytes) -> None:
        value = int.from_bytes(head, "little")
        if self._state == "magic":
            self._frames += 1
            if value == _ZSTD_MAGIC:
                self._expect("descriptor", 1)
            elif value & ~0xF == _ZSTD_SKIPPABLE:
                self._expect("skippable", 4)
            else:
                raise _corrupt("not a zstd frame")
        elif self._state == "skippable":
            self._skip = value
            self._expect("magic", 4)
        elif self._state == "descriptor":
            single = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            fcs = self._FCS_SIZES[value >> 6] or (1 if single else 0)
            rest = (0 if single else 1) + self._DICT_SIZES[value & 3] + fcs
            if rest:
                self._expect("header", rest)
            else:
                self._expect("block", 3)
        elif self._state == "header":
            self._expect("block", 3)
        elif self._state == "block":
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise _corrupt("reserved zstd block type")
            self._skip = 1 if kind == 1 else size
            if not last:
                self._expect("block", 3)
            elif self._checksum:
                self._expect("checksum", 4)
            else:
                self._expect("magic", 4)
        else:  # checksum
            self._expect("magic", 4)


class _ZstdSource:
    """The raw stream as zstandard's stream reader wants it, watched by `_ZstdFrames`."""

    def __init__(self, read_raw: Callable[[int], bytes], frames: _ZstdFrames) -> None:
        self._read_raw = read_raw
        self._frames = frames

    def read(self, n: int = -1) -> bytes:
        data = self._read_raw(n if n > 0 else _CHUNK)
        self._frames.feed(data)
        return data


class _Zstd:
    def __init__(self, read_raw: Callable[[int], bytes]) -> None:
        self._frames = _ZstdFrames()
        dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        source = cast(IO[bytes], _ZstdSource(read_raw, self._frames))  # it only calls read()
        self._reader = dctx.stream_reader(source,
                                          read_size=_CHUNK, read_across_frames=True)

    def next(self) -> bytes:
        try:
            out = self._reader.read(_OUT)
        except _ERRORS as e:  # a RunnerError from read_raw or _ZstdFrames passes through
            raise _corrupt(str(e)) from None
        if not out and not self._frames.complete:
            raise _truncated()
        return out


def _decoder(compression: str, read_raw: Callable[[int], bytes]) -> _Decoder:
    if compression == "none":
        return _Identity(read_raw)
    if compression == "xz":
        return _Std(lzma.LZMADecompressor(), read_raw)
    if compression == "zstd":
        return _Zstd(read_raw)
    if compression == "bzip2":
        return _Std(bz2.BZ2Decompressor(), read_raw)
    raise RunnerError(f"unsupported compression '{compression}'", reason="bad-narinfo")


class DecompressingReader:
    """`read(n)` over the decompressed stream of `read_raw`; fewer than n bytes only at EOF.

    Raises RunnerError(reason="bad-nar") on corrupt or truncated input, and
    as soon as the output exceeds `limit` bytes. Holds at most about
    n + `_OUT` decompressed bytes, whatever the compression ratio.
    """

    def __init__(self, read_raw: Callable[[int], bytes], compression: str, limit: int) -> None:
        self._dec = _decoder(compression, read_raw)
        self._limit = limit
        self._produced = 0
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> None:
        out = self._dec.next()
        if not out:
            self._eof = True
            return
        self._produced += len(out)
        if self._produced > self._limit:
            raise RunnerError(f"NAR is larger than the {self._limit} bytes announced",
                              reason="bad-nar")
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
