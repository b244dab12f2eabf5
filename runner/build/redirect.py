"""Building outputs that are already valid (`--check`, `--repair`) at scratch paths.

A valid output cannot be rebuilt in place: it is registered and may be in
use. So the builder is given a scratch path of the same length instead (as
Nix does): every occurrence of the real hash part in its environment and
arguments becomes the scratch hash part. Afterwards the result is copied
back through its NAR with the scratch hash part rewritten to the real one;
both are 32 characters, so offsets in binaries do not move.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping

from runner.store import nar
from runner.store.canonicalise import canonicalise
from runner.store.derivation import Derivation
from runner.store.paths import HASH_PART_LEN, hash_part, make_store_path, name_part


def scratch_path(drv_path: str, output: str, real: str, store_dir: str) -> str:
    digest = hashlib.sha256(f"rewrite:{drv_path}:name:{output}".encode()).digest()
    return make_store_path("rewrite", digest, name_part(real), store_dir)


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Which outputs are built elsewhere: real path -> scratch path."""

    scratch: Mapping[str, str]

    @classmethod
    def for_outputs(cls, drv_path: str, drv: Derivation, paths: Iterable[str],
                    store_dir: str) -> Redirect:
        wanted = set(paths)
        return cls({out.path: scratch_path(drv_path, name, out.path, store_dir)
                    for name, out in drv.outputs.items() if out.path in wanted})

    @property
    def real(self) -> dict[str, str]:
        """scratch path -> real path."""
        return {s: r for r, s in self.scratch.items()}

    def derivation(self, drv: Derivation) -> Derivation:
        """`drv` as the builder should see it: redirected outputs at their scratch paths."""
        rewrite = _rewriter({hash_part(r): hash_part(s) for r, s in self.scratch.items()})
        outputs = {name: dataclasses.replace(out, path=self.scratch.get(out.path, out.path))
                   for name, out in drv.outputs.items()}
        return dataclasses.replace(
            drv, outputs=outputs, builder=rewrite(drv.builder),
            args=[rewrite(a) for a in drv.args],
            env={k: rewrite(v) for k, v in drv.env.items()})

    def copy_back(self, scratch: str, dest: str) -> None:
        """Copy the tree at `scratch` to `dest` (not existing), scratch hash parts rewritten
        to real ones everywhere (contents, symlink targets, names); canonicalised."""
        table = {hash_part(s).encode(): hash_part(r).encode() for s, r in self.real.items()}
        chunks = _rewrite_stream(nar.dump(scratch), table)
        nar.restore(_Reader(chunks).read, dest)
        canonicalise(dest)

    def references(self, refs: Iterable[str]) -> frozenset[str]:
        real = self.real
        return frozenset(real.get(r, r) for r in refs)


def _rewriter(table: Mapping[str, str]) -> _Rewrite:
    if not table:
        return _Rewrite(None, {})
    return _Rewrite(re.compile("|".join(map(re.escape, table))), dict(table))


@dataclasses.dataclass(frozen=True)
class _Rewrite:
    pattern: re.Pattern[str] | None
    table: dict[str, str]

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: self.table[m.group(0)], text)


def _rewrite_stream(chunks: Iterable[bytes], table: Mapping[bytes, bytes]) -> Iterator[bytes]:
    """Replace same-length byte strings in a stream; a match may straddle two chunks, so
    the last HASH_PART_LEN - 1 bytes wait for the next chunk."""
    pattern = re.compile(b"|".join(map(re.escape, table)))
    keep = HASH_PART_LEN - 1
    pending = b""
    for chunk in chunks:
        pending = pattern.sub(lambda m: table[m.group(0)], pending + chunk)
        if len(pending) > keep:
            yield pending[:-keep]
            pending = pending[-keep:]
    if pending:
        yield pending


class _Reader:
    """`read(n)` over an iterator of chunks (short only at the end)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


def differences(a: str, b: str, limit: int = 20) -> list[str]:
    """Paths below `a` and `b` (relative, '.' for the top) whose type, executable bit,
    contents or link target differ; at most `limit`."""
    found: list[str] = []
    stack = [""]
    while stack and len(found) < limit:
        rel = stack.pop()
        pa, pb = os.path.join(a, rel) if rel else a, os.path.join(b, rel) if rel else b
        try:
            sa, sb = os.lstat(pa), os.lstat(pb)
        except FileNotFoundError:
            found.append(rel or ".")
            continue
        kind_a, kind_b = stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode)
        if kind_a != kind_b:
            found.append(rel or ".")
        elif stat.S_ISDIR(sa.st_mode):
            names = sorted(set(os.listdir(pa)) | set(os.listdir(pb)), reverse=True)
            stack.extend(os.path.join(rel, n) for n in names)
        elif stat.S_ISLNK(sa.st_mode):
            if os.readlink(pa) != os.readlink(pb):
                found.append(rel or ".")
        elif (sa.st_mode & 0o100) != (sb.st_mode & 0o100) or not _same_content(pa, pb):
            found.append(rel or ".")
    return found


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 16), fb.read(1 << 16)
            if ca != cb:
                return False
            if not ca:
                return True

