"""Content hashes as Nix prints and parses them (base16, base32, base64, SRI)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.store import base32

SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
BASES = ("base16", "base32", "base64", "sri")
_CHUNK = 64 * 1024


def _check_algo(algo: str, context: str) -> None:
    if algo not in SIZES:
        known = ", ".join(SIZES)
        raise RunnerError(
            f"unknown hash algorithm '{algo}' in '{context}' (expected one of {known})",
            reason="bad-hash",
        )


def _base64_length(size: int) -> int:
    return (size + 2) // 3 * 4


@dataclass(frozen=True)
class Hash:
    algo: str
    digest: bytes

    def __post_init__(self) -> None:
        _check_algo(self.algo, self.algo)
        if len(self.digest) != SIZES[self.algo]:
            raise RunnerError(
                f"{self.algo} digest must be {SIZES[self.algo]} bytes, got {len(self.digest)}",
                reason="bad-hash",
            )

    def hex(self) -> str:
        return self.digest.hex()

    def base32(self) -> str:
        return base32.encode(self.digest)

    def base64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    def sri(self) -> str:
        return f"{self.algo}-{self.base64()}"

    def to_string(self, base: str = "base32", *, prefix: bool = True) -> str:
        """`algo:digest` in the given base, as Nix prints; "sri" is always prefixed."""
        if base == "sri":
            return self.sri()
        encoders = {"base16": self.hex, "base32": self.base32, "base64": self.base64}
        if base not in encoders:
            raise RunnerError(f"unknown hash base '{base}'", reason="bad-hash")
        text = encoders[base]()
        return f"{self.algo}:{text}" if prefix else text

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def parse(cls, text: str, algo: str | None = None) -> Hash:
        """Parse `algo:digest`, SRI `algo-base64`, or a bare digest when `algo` is given.

        The encoding of the digest is told apart by its length, as Nix does.
        """
        rest, sri = text, False
        if ":" in text:
            found, rest = text.split(":", 1)
        elif "-" in text:
            found, rest = text.split("-", 1)
            sri = True
        elif algo is None:
            raise RunnerError(
                f"hash '{text}' does not say its algorithm (write e.g. 'sha256:{text}')",
                reason="bad-hash",
            )
        else:
            found = algo
        _check_algo(found, text)
        if algo is not None and found != algo:
            raise RunnerError(
                f"hash '{text}' should have type '{algo}', not '{found}'", reason="bad-hash"
            )
        size = SIZES[found]
        if not sri and len(rest) == 2 * size:
            try:
                return cls(found, bytes.fromhex(rest))
            except ValueError:
                raise RunnerError(f"invalid base-16 hash '{text}'", reason="bad-hash") from None
        if not sri and len(rest) == base32.encoded_length(size):
            try:
                return cls(found, base32.decode(rest))
            except RunnerError as e:
                raise RunnerError(f"invalid hash '{text}': {e}", reason="bad-hash") from None
        if len(rest) == _base64_length(size):
            try:
                digest = base64.b64decode(rest.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                raise RunnerError(f"invalid base-64 hash '{text}'", reason="bad-hash") from None
            if len(digest) == size:
                return cls(found, digest)
        raise RunnerError(
            f"hash '{text}' has wrong length for hash type '{found}'", reason="bad-hash"
        )


def compress(digest: bytes, size: int) -> bytes:
    """XOR-fold `digest` into `size` bytes (Nix's compressHash)."""
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)


def hash_bytes(algo: str, data: bytes) -> Hash:
    _check_algo(algo, algo)
    return Hash(algo, hashlib.new(algo, data).digest())


def hash_file(algo: str, path: str | os.PathLike[str]) -> Hash:
    """Flat hash of a file's contents, read in fixed-size chunks."""
    _check_algo(algo, algo)
    hasher = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return Hash(algo, hasher.digest())
