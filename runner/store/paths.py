"""Store path computation and parsing, exactly as Nix names paths.

A store path is `<store_dir>/<32 base-32 chars>-<name>`; the hash part is the
first 160 bits of a SHA-256 over a descriptor string that says what kind of
object the path holds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from runner.errors import RunnerError
from runner.store import base32
from runner.store.hashes import Hash, compress

HASH_PART_LEN = 32
MAX_NAME_LEN = 211
_NAME_CHARS = re.compile(r"[A-Za-z0-9+\-._?=]*")
_HASH_PART = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}")


def validate_name(name: str) -> None:
    """Reject names Nix refuses in a store path. A leading '.' is fine (`.gitignore`,
    `...`), as since Nix 2.4; `.` and `..` and names whose first dash-separated part
    is one of them (`.-1`, `..-a`) are refused as newer Nix does (Nix 2.4 to 2.19
    took them by accident; docs/building.md)."""
    if not name:
        raise RunnerError("store path name is empty", reason="bad-name")
    if len(name) > MAX_NAME_LEN:
        raise RunnerError(
            f"store path name '{name}' is longer than {MAX_NAME_LEN} characters",
            reason="bad-name",
        )
    if name.split("-", 1)[0] in (".", ".."):
        raise RunnerError(f"store path name '{name}' is not valid: it must not be '.' or "
                          "'..' nor start with '.-' or '..-'", reason="bad-name")
    if not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        raise RunnerError(
            f"store path name '{name}' contains illegal character {bad!r} "
            "(allowed: letters, digits and + - . _ ? =)",
            reason="bad-name",
        )


def make_store_path(type_: str, digest: bytes, name: str, store_dir: str) -> str:
    validate_name(name)
    descriptor = f"{type_}:sha256:{digest.hex()}:{store_dir}:{name}"
    inner = compress(hashlib.sha256(descriptor.encode()).digest(), 20)
    return f"{store_dir}/{base32.encode(inner)}-{name}"


def _with_references(type_: str, references: Iterable[str]) -> str:
    return "".join([type_, *(f":{ref}" for ref in sorted(set(references)))])


def make_text_path(name: str, text_sha256: bytes, references: Iterable[str], store_dir: str) -> str:
    return make_store_path(_with_references("text", references), text_sha256, name, store_dir)


def make_source_path(
    name: str, nar_sha256: bytes, store_dir: str, references: Iterable[str] = ()
) -> str:
    return make_store_path(_with_references("source", references), nar_sha256, name, store_dir)


def output_path_name(drv_name: str, output: str) -> str:
    return drv_name if output == "out" else f"{drv_name}-{output}"


def make_output_path(output: str, drv_hash: bytes, drv_name: str, store_dir: str) -> str:
    return make_store_path(
        f"output:{output}", drv_hash, output_path_name(drv_name, output), store_dir
    )


def make_fixed_output_path(name: str, hash: Hash, recursive: bool, store_dir: str) -> str:
    if recursive and hash.algo == "sha256":
        return make_source_path(name, hash.digest, store_dir)
    method = "r:" if recursive else ""
    inner = hashlib.sha256(f"fixed:out:{method}{hash.algo}:{hash.hex()}:".encode()).digest()
    return make_store_path("output:out", inner, name, store_dir)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def hash_part(path: str) -> str:
    return _basename(path)[:HASH_PART_LEN]


def name_part(path: str) -> str:
    return _basename(path)[HASH_PART_LEN + 1 :]


def parse_store_path(path: str, store_dir: str) -> tuple[str, str]:
    """Split a store path into (hash part, name); anything else is a bad path."""
    prefix = store_dir + "/"
    base = path[len(prefix) :]
    if not path.startswith(prefix) or "/" in base:
        raise RunnerError(f"path '{path}' is not a store path in '{store_dir}'", reason="bad-path")
    digest, dash, name = base[:HASH_PART_LEN], base[HASH_PART_LEN : HASH_PART_LEN + 1], base[33:]
    if not _HASH_PART.fullmatch(digest) or dash != "-":
        raise RunnerError(f"store path '{path}' has a malformed hash part", reason="bad-path")
    try:
        validate_name(name)
    except RunnerError as e:
        raise RunnerError(f"store path '{path}': {e}", reason="bad-path") from None
    return digest, name


def is_store_path(path: str, store_dir: str) -> bool:
    try:
        parse_store_path(path, store_dir)
    except RunnerError:
        return False
    return True


def is_in_store(path: str, store_dir: str) -> bool:
    """True for anything strictly under the store dir (a store path or a file inside one)."""
    return path.startswith(store_dir + "/") and len(path) > len(store_dir) + 1


def to_store_path(path: str, store_dir: str) -> str:
    """The store path holding `path` (which may point inside it)."""
    if not is_in_store(path, store_dir):
        raise RunnerError(f"path '{path}' is not in the store '{store_dir}'", reason="bad-path")
    top = path[len(store_dir) + 1 :].split("/", 1)[0]
    result = f"{store_dir}/{top}"
    parse_store_path(result, store_dir)
    return result
