"""Ed25519 keys and signatures in Nix's text forms.

A key or signature is `name:base64(bytes)`: a secret key holds libsodium's 64
bytes (seed then public key), a public key 32 bytes, a signature 64 bytes. A
path is signed by signing its fingerprint (see `narinfo.fingerprint`).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

from runner.errors import RunnerError


def _nacl() -> ModuleType:
    """`nacl.signing`, imported at the first key used: ~16 ms that every build command
    paid, keys or not (the store's modules import this one)."""
    import nacl.signing

    return nacl.signing


def _split(text: str, what: str) -> tuple[str, bytes]:
    name, sep, data = text.strip().partition(":")
    if not sep or not name:
        raise RunnerError(f"{what} '{_shorten(text)}' is not of the form NAME:BASE64",
                          reason="bad-key")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise RunnerError(f"{what} '{name}' is not valid base-64", reason="bad-key") from None
    return name, raw


def _shorten(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class PublicKey:
    name: str
    key: bytes  # 32 bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        name, raw = _split(text, "public key")
        if len(raw) != 32:
            raise RunnerError(f"public key '{name}' must be 32 bytes, got {len(raw)}",
                              reason="bad-key")
        return cls(name, raw)

    def to_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode('ascii')}"

    def verify(self, fingerprint: str, signature: bytes) -> bool:
        from nacl.exceptions import BadSignatureError

        try:
            _nacl().VerifyKey(self.key).verify(fingerprint.encode("utf-8"), signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: bytes  # 64 bytes: 32-byte seed followed by the public key

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        name, raw = _split(text, "secret key")
        if len(raw) != 64:
            raise RunnerError(f"secret key '{name}' must be 64 bytes, got {len(raw)}",
                              reason="bad-key")
        derived = bytes(_nacl().SigningKey(raw[:32]).verify_key)
        if derived != raw[32:]:
            raise RunnerError(f"secret key '{name}' is corrupt (its halves do not match)",
                              reason="bad-key")
        return cls(name, raw)

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        if not name or ":" in name or name != name.strip():
            raise RunnerError(f"invalid key name '{name}' (non-empty, no ':' or spaces at ends)",
                              reason="bad-key")
        signing = _nacl().SigningKey.generate()
        return cls(name, bytes(signing) + bytes(signing.verify_key))

    @classmethod
    def load(cls, path: str) -> SecretKey:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise RunnerError(f"cannot read secret key file '{path}': {e}",
                              reason="bad-key") from None
        try:
            return cls.parse(text)
        except RunnerError as e:
            raise RunnerError(f"{path}: {e.message}", reason="bad-key") from None

    def to_string(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode('ascii')}"

    def public_key(self) -> PublicKey:
        return PublicKey(self.name, self.key[32:])

    def sign(self, fingerprint: str) -> str:
        """A signature as it appears on a `Sig:` line."""
        signed = _nacl().SigningKey(self.key[:32]).sign(fingerprint.encode("utf-8"))
        return f"{self.name}:{base64.b64encode(signed.signature).decode('ascii')}"


def parse_signature(text: str) -> tuple[str, bytes] | None:
    """(key name, 64 signature bytes), or None for anything malformed."""
    try:
        name, raw = _split(text, "signature")
    except RunnerError:
        return None
    return (name, raw) if len(raw) == 64 else None


def parse_public_keys(texts: Iterable[str]) -> dict[str, PublicKey]:
    """Keys by name; a malformed key is a user error naming it."""
    keys: dict[str, PublicKey] = {}
    for text in texts:
        key = PublicKey.parse(text)
        keys[key.name] = key
    return keys


def count_valid_signatures(fingerprint: str, sigs: Iterable[str],
                           keys: dict[str, PublicKey]) -> int:
    """How many distinct trusted keys produced a valid signature (Nix's checkSignatures)."""
    good: set[str] = set()
    for sig in sigs:
        parsed = parse_signature(sig)
        if parsed is None or parsed[0] not in keys or parsed[0] in good:
            continue
        if keys[parsed[0]].verify(fingerprint, parsed[1]):
            good.add(parsed[0])
    return len(good)


def write_key_file(path: str, text: str, *, secret: bool) -> None:
    """Create a new key file (never overwriting one); a secret key is readable by us only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except FileExistsError:
        raise RunnerError(f"key file '{path}' already exists; not overwriting it",
                          reason="exists") from None
    except OSError as e:
        raise RunnerError(f"cannot create key file '{path}': {e.strerror}",
                          reason="io") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
