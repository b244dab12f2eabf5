"""Nix's base-32: its own alphabet (no e, o, u, t) and its own digit order.

Nix reads the digest as one little-endian number and prints that number's
base-32 digits most significant first, so the last byte's bits lead.
"""

from __future__ import annotations

from runner.errors import RunnerError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}


def encoded_length(size: int) -> int:
    """Characters needed for `size` bytes (Nix: (size*8-1)/5+1)."""
    return 0 if size == 0 else (size * 8 - 1) // 5 + 1


def encode(data: bytes) -> str:
    length = encoded_length(len(data))
    number = int.from_bytes(data, "little")
    out = []
    for _ in range(length):
        out.append(ALPHABET[number & 0x1F])
        number >>= 5
    return "".join(reversed(out))


def decode(s: str) -> bytes:
    size = len(s) * 5 // 8
    if encoded_length(size) != len(s):
        raise RunnerError(f"invalid base-32 string '{s}': bad length {len(s)}", reason="bad-hash")
    number = 0
    for c in s:
        value = _VALUE.get(c)
        if value is None:
            raise RunnerError(
                f"invalid base-32 string '{s}': bad character {c!r}", reason="bad-hash"
            )
        number = number << 5 | value
    if number >> (size * 8):
        raise RunnerError(f"invalid base-32 string '{s}': too many bits", reason="bad-hash")
    return number.to_bytes(size, "little")
