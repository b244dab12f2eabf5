"""`failure/<drv hash part>.failure`: a signed record that a derivation failed to build.

A text file in a binary cache, next to the narinfos, in the same `Key: value`
form, with one `Sig:` line per signature:

    Deriver: <drv basename>
    Class: failed
    ExitStatus: 1
    Time: 1765137000
    System: x86_64-linux
    Log: log/<drv basename>
    LogHash: sha256:<base32 of the log file's bytes>
    LogSize: 1234
    Sig: team-cache-1:<base64>

The signature covers every other field (see `fingerprint`), the log's hash
included, so neither a field nor the log can be changed without breaking
it. Parsing is strict (each field once, no unknown fields, bounded sizes):
anything else is `RunnerError(reason="bad-failure-record")`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from runner.errors import RunnerError
from runner.store import paths
from runner.store.hashes import Hash
from runner.substituters.signing import PublicKey, SecretKey, parse_signature

# Kinds of permanent failure a record may state; a record of an unknown kind is ignored.
CLASSES = ("failed",)
MAX_RECORD = 16 * 1024  # bytes: a record is a few hundred
MAX_LOG = 16 * 1024 * 1024  # bytes of a failure's log, written and read
FINGERPRINT_PREFIX = "runner-failure-1"  # never a narinfo's `1;/…`: no signature fits both

_FIELDS = ("Deriver", "Class", "ExitStatus", "Time", "System", "Log", "LogHash", "LogSize")
_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_EXIT = re.compile(r"0|-?[1-9][0-9]{0,9}|unknown")
_SYSTEM = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


def record_name(drv_path: str) -> str:
    """Where a derivation's record lives in a cache."""
    return f"failure/{paths.hash_part(drv_path)}.failure"


def log_name(drv_path: str) -> str:
    """Where a derivation's log lives in a cache (as `nix store copy-log` writes it)."""
    return f"log/{drv_path.rsplit('/', 1)[1]}"


@dataclass(frozen=True)
class CacheFailure:
    drv_path: str  # full store path of the .drv
    failure_class: str
    exit_status: int | None
    time: int  # seconds since the epoch, when it failed
    system: str
    log: str  # relative to the cache: log/<drv basename>
    log_hash: Hash  # sha256 of the log file as stored
    log_size: int
    sigs: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """What is signed: every field, `;`-separated (no field can hold a `;`)."""
        exit_status = "unknown" if self.exit_status is None else str(self.exit_status)
        return ";".join((FINGERPRINT_PREFIX, self.drv_path, self.failure_class, exit_status,
                         str(self.time), self.system, self.log,
                         self.log_hash.to_string("base32"), str(self.log_size)))

    def signed(self, key: SecretKey) -> CacheFailure:
        kept = tuple(s for s in self.sigs if not s.startswith(key.name + ":"))
        return replace(self, sigs=(*kept, key.sign(self.fingerprint())))

    def to_text(self) -> str:
        exit_status = "unknown" if self.exit_status is None else str(self.exit_status)
        lines = [f"Deriver: {self.drv_path.rsplit('/', 1)[1]}", f"Class: {self.failure_class}",
                 f"ExitStatus: {exit_status}", f"Time: {self.time}", f"System: {self.system}",
                 f"Log: {self.log}", f"LogHash: {self.log_hash.to_string('base32')}",
                 f"LogSize: {self.log_size}"]
        lines.extend(f"Sig: {sig}" for sig in sorted(set(self.sigs)))
        return "\n".join(lines) + "\n"

    def signer(self, keys: dict[str, PublicKey]) -> str | None:
        """The name of a trusted key whose signature is valid, or None."""
        fingerprint = self.fingerprint()
        for sig in self.sigs:
            parsed = parse_signature(sig)
            if parsed is not None and parsed[0] in keys and keys[parsed[0]].verify(
                    fingerprint, parsed[1]):
                return parsed[0]
        return None

    def why_untrusted(self, keys: dict[str, PublicKey]) -> str:
        """Why `signer` found no trusted signature, in a few words."""
        names = sorted({p[0] for p in map(parse_signature, self.sigs) if p is not None})
        if not self.sigs:
            return "it is not signed"
        if not set(names) & set(keys):
            shown = ", ".join(f"'{n}'" for n in names) or "malformed signatures only"
            return f"it is signed only by keys you do not trust ({shown})"
        return "its signature does not match its contents"


def check_system(system: str) -> bool:
    return _SYSTEM.fullmatch(system) is not None


def parse(text: str, store_dir: str, origin: str) -> CacheFailure:
    """Parse a record for a store in `store_dir`; `origin` names it in errors."""

    def bad(why: str) -> RunnerError:
        return RunnerError(f"failure record '{origin}' is malformed: {why}",
                           reason="bad-failure-record")

    if len(text) > MAX_RECORD:
        raise bad(f"larger than {MAX_RECORD} bytes")
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise bad(f"line '{line[:60]}' is not 'Key: value'")
        if key == "Sig":
            sigs.append(value)
        elif key not in _FIELDS:
            raise bad(f"unknown field '{key[:40]}'")
        elif key in fields:
            raise bad(f"'{key}' appears twice")
        else:
            fields[key] = value
    missing = [f for f in _FIELDS if f not in fields]
    if missing:
        raise bad(f"'{missing[0]}' is missing")
    deriver = f"{store_dir}/{fields['Deriver']}"
    try:
        paths.parse_store_path(deriver, store_dir)
    except RunnerError as e:
        raise bad(e.message) from None
    if not deriver.endswith(".drv"):
        raise bad(f"Deriver '{fields['Deriver'][:60]}' is not a derivation")
    if fields["Class"] not in CLASSES:
        raise bad(f"unknown Class '{fields['Class'][:40]}'")
    for key in ("Time", "LogSize"):
        if not _INT.fullmatch(fields[key]):
            raise bad(f"{key} '{fields[key][:30]}' is not a number")
    if not _EXIT.fullmatch(fields["ExitStatus"]):
        raise bad(f"ExitStatus '{fields['ExitStatus'][:30]}' is not a number")
    if not check_system(fields["System"]):
        raise bad(f"System '{fields['System'][:40]}' is not a system name")
    if fields["Log"] != log_name(deriver):
        raise bad(f"Log '{fields['Log'][:60]}' is not '{log_name(deriver)}'")
    try:
        log_hash = Hash.parse(fields["LogHash"])
    except RunnerError as e:
        raise bad(f"LogHash: {e.message}") from None
    if log_hash.algo != "sha256" or fields["LogHash"] != log_hash.to_string("base32"):
        raise bad("LogHash must be 'sha256:' and base-32")
    log_size = int(fields["LogSize"])
    if log_size > MAX_LOG:
        raise bad(f"its log of {log_size} bytes is larger than {MAX_LOG}")
    exit_text = fields["ExitStatus"]
    return CacheFailure(
        drv_path=deriver, failure_class=fields["Class"],
        exit_status=None if exit_text == "unknown" else int(exit_text),
        time=int(fields["Time"]), system=fields["System"], log=fields["Log"],
        log_hash=log_hash, log_size=log_size, sigs=tuple(sigs))
