"""`<hashpart>.narinfo`: what a binary cache says about one store path.

Parsed and printed as Nix does: `Key: value` lines, unknown keys ignored,
references and deriver as basenames, one `Sig:` line per signature. Parsing
is strict about what we rely on (paths, hashes, sizes) and turns every
problem into `RunnerError(reason="bad-narinfo")` naming where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from runner.errors import RunnerError
from runner.store import paths
from runner.store.hashes import Hash
from runner.substituters.signing import SecretKey

COMPRESSIONS = ("none", "xz", "zstd", "bzip2")
EXTENSIONS = {"none": "", "xz": ".xz", "zstd": ".zst", "bzip2": ".bz2"}
_INT = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class NarInfo:
    path: str
    url: str
    nar_hash: Hash
    nar_size: int
    compression: str = "none"
    file_hash: Hash | None = None
    file_size: int | None = None
    references: frozenset[str] = field(default_factory=frozenset)  # full store paths
    deriver: str | None = None  # full store path
    sigs: tuple[str, ...] = ()
    ca: str | None = None

    def to_text(self) -> str:
        store_dir = self.path.rsplit("/", 1)[0]
        lines = [f"StorePath: {self.path}", f"URL: {self.url}", f"Compression: {self.compression}"]
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash.to_string('base32')}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines.append(f"NarHash: {self.nar_hash.to_string('base32')}")
        lines.append(f"NarSize: {self.nar_size}")
        refs = sorted(_base(r, store_dir) for r in self.references)
        lines.append("References: " + " ".join(refs))
        if self.deriver:
            lines.append(f"Deriver: {_base(self.deriver, store_dir)}")
        lines.extend(f"Sig: {sig}" for sig in sorted(set(self.sigs)))
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        return fingerprint(self.path, self.nar_hash, self.nar_size, self.references)

    def signed(self, key: SecretKey) -> NarInfo:
        """This info with `key`'s signature added (replacing an older one by the same key)."""
        kept = tuple(s for s in self.sigs if not s.startswith(key.name + ":"))
        return replace(self, sigs=(*kept, key.sign(self.fingerprint())))


def fingerprint(path: str, nar_hash: Hash, nar_size: int, references: frozenset[str]) -> str:
    """The string Nix signs: `1;<path>;<sha256:base32>;<size>;<ref,ref,…>`."""
    if nar_hash.algo != "sha256":
        raise RunnerError(f"cannot sign '{path}': its NAR hash is not sha256", reason="bad-hash")
    refs = ",".join(sorted(references))
    return f"1;{path};{nar_hash.to_string('base32')};{nar_size};{refs}"


def _base(path: str, store_dir: str) -> str:
    paths.parse_store_path(path, store_dir)
    return path[len(store_dir) + 1 :]


def nar_url(file_hash: Hash, compression: str) -> str:
    return f"nar/{file_hash.base32()}.nar{EXTENSIONS[compression]}"


def parse(text: str, store_dir: str, origin: str) -> NarInfo:
    """Parse a narinfo for a store in `store_dir`; `origin` names it in errors."""

    def corrupt(why: str) -> RunnerError:
        return RunnerError(f"narinfo '{origin}' is corrupt: {why}", reason="bad-narinfo")

    fields: dict[str, str] = {}
    sigs: list[str] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if not sep or not key:
            raise corrupt(f"line '{line[:60]}' is not 'Key: value'")
        if key == "Sig":
            sigs.append(value)
        elif key in fields:
            raise corrupt(f"'{key}' appears twice")
        else:
            fields[key] = value

    def need(key: str) -> str:
        if not fields.get(key):
            raise corrupt(f"'{key}' is missing")
        return fields[key]

    def store_path(base: str) -> str:
        try:
            full = f"{store_dir}/{base}"
            paths.parse_store_path(full, store_dir)
        except RunnerError as e:
            raise corrupt(e.message) from None
        return full

    def hash_field(key: str) -> Hash:
        try:
            return Hash.parse(fields[key])
        except RunnerError as e:
            raise corrupt(f"{key}: {e.message}") from None

    def int_field(key: str) -> int:
        if not _INT.fullmatch(fields[key]):
            raise corrupt(f"{key} '{fields[key][:30]}' is not a number")
        return int(fields[key])

    path = need("StorePath")
    if path.rsplit("/", 1)[0] != store_dir:
        raise corrupt(f"store path '{path}' is not in '{store_dir}'")
    store_path(path[len(store_dir) + 1 :])
    url = need("URL")
    if url.startswith("/") or ".." in url.split("/") or "?" in url or "#" in url:
        raise corrupt(f"URL '{url}' must be relative to the cache")
    need("NarHash")
    need("NarSize")
    compression = fields.get("Compression") or "bzip2"  # Nix's default when absent
    if compression not in COMPRESSIONS:
        raise corrupt(f"unsupported compression '{compression}'")
    nar_size = int_field("NarSize")
    if nar_size == 0:
        raise corrupt("NarSize is 0")
    return NarInfo(
        path=path,
        url=url,
        nar_hash=hash_field("NarHash"),
        nar_size=nar_size,
        compression=compression,
        file_hash=hash_field("FileHash") if fields.get("FileHash") else None,
        file_size=int_field("FileSize") if fields.get("FileSize") else None,
        references=frozenset(store_path(r) for r in fields.get("References", "").split()),
        deriver=(store_path(fields["Deriver"])
                 if fields.get("Deriver") and fields["Deriver"] != "unknown-deriver" else None),
        sigs=tuple(sigs),
        ca=fields.get("CA") or None,
    )
