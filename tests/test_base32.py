from __future__ import annotations

import hashlib

import pytest

from runner.errors import RunnerError
from runner.store import base32


def test_known_vectors() -> None:
    # Values printed by `nix-hash --to-base32` (Nix 2.8).
    assert base32.encode(hashlib.sha256(b"").digest()) == (
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    )
    assert base32.encode(b"\x00") == "00"
    assert base32.encode(b"\x1f") == "0z"
    assert base32.encode(b"\xff") == "7z"


def test_bit_order_last_byte_leads() -> None:
    # 0x01 in the last of two bytes is bit 8 → digit 1 of the number (8 // 5), value 1 << 3.
    assert base32.encode(b"\x00\x01") == "0080"
    assert base32.encode(b"\x01\x00") == "0001"


@pytest.mark.parametrize("size", [0, 1, 2, 5, 16, 20, 32, 64])
def test_round_trip(size: int) -> None:
    data = bytes((i * 37 + 11) % 256 for i in range(size))
    text = base32.encode(data)
    assert len(text) == base32.encoded_length(size)
    assert base32.decode(text) == data


@pytest.mark.parametrize(
    "bad", ["e" * 52, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7", "0", "0u", "z" * 52]
)
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(RunnerError) as info:
        base32.decode(bad)
    assert info.value.reason == "bad-hash"
