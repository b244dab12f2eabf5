"""Content-addressed paths vouch for themselves: their name is a hash of their content.

As in Nix, a path whose `CA` field reproduces its store path needs no
signature. Unlike Nix 2.8 we also check the content against that hash
after unpacking, so a lying `CA` field cannot smuggle in other bytes.
"""

from __future__ import annotations

import hashlib
import os

from runner.errors import RunnerError
from runner.store import nar, paths
from runner.store.hashes import Hash, hash_file
from runner.substituters.narinfo import NarInfo


def parse_ca(ca: str) -> tuple[str, Hash]:
    """`text:sha256:…` → ("text", h); `fixed:r:algo:…` → ("recursive", h); `fixed:algo:…`
    → ("flat", h)."""
    if ca.startswith("text:"):
        return "text", Hash.parse(ca[len("text:"):])
    if ca.startswith("fixed:r:"):
        return "recursive", Hash.parse(ca[len("fixed:r:"):])
    if ca.startswith("fixed:"):
        return "flat", Hash.parse(ca[len("fixed:"):])
    raise RunnerError(f"unknown content address '{ca}'", reason="bad-narinfo")


def vouches_for_path(info: NarInfo, store_dir: str) -> bool:
    """True when `info.ca` is well formed and computes `info.path` (no signature needed)."""
    if not info.ca:
        return False
    try:
        method, h = parse_ca(info.ca)
        name = paths.name_part(info.path)
        refs = info.references
        if info.path in refs:
            return False  # self-references: not supported here, so not trusted either
        if method == "text":
            expected = paths.make_text_path(name, h.digest, refs, store_dir) \
                if h.algo == "sha256" else ""
        elif method == "recursive" and h.algo == "sha256":
            expected = paths.make_source_path(name, h.digest, store_dir, refs)
        else:
            expected = "" if refs else paths.make_fixed_output_path(
                name, h, method == "recursive", store_dir)
    except RunnerError:
        return False
    return expected == info.path


def check_content(info: NarInfo, unpacked: str) -> None:
    """Raise unless the unpacked tree has the hash its `CA` field claims."""
    if not info.ca:
        return
    method, h = parse_ca(info.ca)
    if method == "recursive":
        got = info.nar_hash if h.algo == info.nar_hash.algo else _nar_hash(h.algo, unpacked)
    elif os.path.isfile(unpacked) and not os.path.islink(unpacked):
        got = hash_file(h.algo, unpacked)
    else:
        raise RunnerError(f"'{info.path}' should be a regular file (its CA field is flat)",
                          reason="hash-mismatch")
    if got != h:
        raise RunnerError(f"content of '{info.path}' has hash {got}, but its CA field says {h}",
                          reason="hash-mismatch")


def _nar_hash(algo: str, path: str) -> Hash:
    hasher = hashlib.new(algo)
    for chunk in nar.dump(path):
        hasher.update(chunk)
    return Hash(algo, hasher.digest())
