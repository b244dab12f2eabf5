from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.store.hashes import Hash, compress, hash_bytes, hash_file

# sha*/md5 of b"abc" in Nix's base-32, printed by `nix-hash --to-base32` (Nix 2.8).
ABC_BASE32 = {
    "md5": "3jgzhjhz9zjvbb0kyj7jc500ch",
    "sha1": "kpcd173cq987hw957sx6m0868wv3x6d9",
    "sha256": "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
    "sha512": "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84"
    "hawjbk876blyk1jfhkbbyx",
}


@pytest.mark.parametrize("algo", sorted(ABC_BASE32))
def test_encodings(algo: str) -> None:
    digest = hashlib.new(algo, b"abc").digest()
    h = hash_bytes(algo, b"abc")
    assert h == Hash(algo, digest)
    assert h.hex() == digest.hex()
    assert h.base32() == ABC_BASE32[algo]
    assert h.base64() == base64.b64encode(digest).decode()
    assert h.sri() == f"{algo}-{h.base64()}"
    assert str(h) == f"{algo}:{ABC_BASE32[algo]}"
    assert h.to_string("base16", prefix=False) == digest.hex()
    assert h.to_string("sri") == h.sri()


@pytest.mark.parametrize("algo", sorted(ABC_BASE32))
def test_parse_every_form(algo: str) -> None:
    h = hash_bytes(algo, b"abc")
    for base in ("base16", "base32", "base64"):
        assert Hash.parse(h.to_string(base)) == h
        assert Hash.parse(h.to_string(base), algo) == h
        assert Hash.parse(h.to_string(base, prefix=False), algo) == h
    assert Hash.parse(h.sri()) == h
    assert Hash.parse(h.sri(), algo) == h


@pytest.mark.parametrize(
    "text, algo",
    [
        ("ba7816bf", None),  # bare without algo
        ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", None),
        ("sha256:ba7816bf8f01", None),  # wrong length
        ("sha256:" + "g" * 64, None),  # not hex
        ("sha256:" + "e" * 52, None),  # not base-32
        ("sha256:" + "!" * 44, None),  # not base-64
        ("sha257:" + "0" * 64, None),  # unknown algo
        ("sha256-" + hash_bytes("sha256", b"").hex(), None),  # SRI must be base-64
        ("sha1:" + "0" * 40, "sha256"),  # algo mismatch
        ("md5-" + "A" * 24, "sha256"),
        ("", "sha256"),
        ("sha256:é" + "0" * 43, None),
    ],
)
def test_parse_rejects(text: str, algo: str | None) -> None:
    with pytest.raises(RunnerError) as info:
        Hash.parse(text, algo)
    assert info.value.reason == "bad-hash"
    assert text in info.value.message or not text


def test_hash_rejects_wrong_digest_size() -> None:
    with pytest.raises(RunnerError) as e:
        Hash("sha256", b"\0" * 20)
    assert e.value.reason == "bad-hash"


def test_compress_xor_folds() -> None:
    assert compress(bytes(range(1, 5)), 2) == bytes([1 ^ 3, 2 ^ 4])
    digest = hashlib.sha256(b"x").digest()
    folded = bytearray(20)
    for i, b in enumerate(digest):
        folded[i % 20] ^= b
    assert compress(digest, 20) == bytes(folded)
    assert compress(b"", 3) == b"\0\0\0"


def test_hash_file_streams_large_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # spans several read chunks
    path = tmp_path / "f"
    path.write_bytes(data)
    for algo in ("md5", "sha1", "sha256", "sha512"):
        assert hash_file(algo, path) == Hash(algo, hashlib.new(algo, data).digest())
